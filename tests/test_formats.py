"""The table of checkpoint formats: each record round-trips, each file is claimed by exactly one
record, and a format added to the table alone is read, written and shown by every command."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpumlp.cli import commands as cli
from gpumlp.errors import CheckpointError
from gpumlp.formats import checkpoint, interop, native
from gpumlp.formats.atomic import atomic_write
from gpumlp.formats.base import Format, Source, check_sizes, get
from gpumlp.model import MLP
from standins.entry_point import run_main

NAMES = ["npz", "json", "rust", "nielsen"]


def sigmoid_mse(input_divisor=255.0, dtype="float64") -> MLP:
    """A network every format can hold: sigmoid everywhere, mse; non-round parameters."""
    model = MLP((784, 12, 10), "sigmoid", "mse", init="normal", seed=5, dtype=dtype, input_divisor=input_divisor)
    model.theta *= 0.1
    return model


def host(model: MLP) -> dict:
    return {k: model.be.to_numpy(v) for k, v in model.params.items()}


def record(name: str) -> Format:
    return next(fmt for fmt in checkpoint.FORMATS if fmt.name == name)


def write(fmt: Format, path, model: MLP):
    """``model`` written by ``fmt``'s own ``write``, as ``save`` or ``convert --to`` call it."""
    fmt.write(path, checkpoint.build_metadata(model), host(model), {})
    return path


def claimants(path) -> list[str]:
    """The names of the formats whose ``detect`` says yes to the file at ``path``."""
    known = {s for fmt in checkpoint.FORMATS for s in fmt.suffixes}
    with open(path, "rb") as f:
        source = Source(path, f, path.stat().st_size, known, checkpoint.MAX_JSON_BYTES)
        return [fmt.name for fmt in checkpoint.FORMATS if fmt.detect(source)]


def test_the_table_lists_the_four_formats_with_their_user_visible_names():
    assert [fmt.name for fmt in checkpoint.FORMATS] == NAMES
    assert checkpoint.FORMATS == (*native.OWN, *interop.FOREIGN)
    assert [fmt.foreign for fmt in checkpoint.FORMATS] == [False, False, True, True]
    assert [fmt.label for fmt in interop.FOREIGN] == ["Rust MLP JSON", "Nielsen network2 JSON"]


@pytest.mark.parametrize("name", NAMES)
def test_every_format_round_trips_through_its_write_and_read(tmp_path, name):
    """With input pixel / 256 (both foreign projects' scaling) nothing is rescaled on the way: the
    parameters come back equal (bit for bit: float64 → decimal repr → float64)."""
    fmt, model = record(name), sigmoid_mse(input_divisor=256.0)
    path = write(fmt, tmp_path / f"net{fmt.suffixes[0]}", model)
    loaded, meta = checkpoint.load(path)
    assert (loaded.sizes, loaded.activation, loaded.loss, loaded.input_divisor) == (
        (784, 12, 10),
        "sigmoid",
        "mse",
        256,
    )
    for k, P in host(model).items():
        np.testing.assert_array_equal(host(loaded)[k], P)
    assert meta.get("imported_from") == (name if fmt.foreign else None)


@pytest.mark.parametrize("name", ["rust", "nielsen"])
def test_gpumlp_to_foreign_and_back_computes_the_same(tmp_path, name):
    """A gpumlp network on pixel / 255 → the foreign format (W0 folded for pixel / 256) → gpumlp
    again: parameters equal to float tolerance, the same outputs on the same images."""
    model = sigmoid_mse(dtype="float32")
    source = checkpoint.save(tmp_path / "m.npz", model)
    checkpoint.convert(source, tmp_path / "foreign.json", to=name)
    back = checkpoint.convert(tmp_path / "foreign.json", tmp_path / "back.npz")
    assert back.input_divisor == 256.0 and checkpoint.read_metadata(tmp_path / "back.npz")["imported_from"] == name
    P = np.random.default_rng(0).integers(0, 256, (50, 784)) / 255.0  # images as load_mnist scales them
    np.testing.assert_allclose(back.predict_proba(P), model.predict_proba(P), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        host(back)["W0"], host(model)["W0"] * 256 / 255, rtol=1e-6
    )  # x/256 @ W0·256/255 = x/255 @ W0
    np.testing.assert_array_equal(host(back)["b1"], host(model)["b1"])  # only W0 is rescaled


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("file_name", ["net{suffix}", "net", "net.backup"])
def test_exactly_one_format_claims_each_file_by_name_or_content(tmp_path, name, file_name):
    fmt = record(name)
    path = write(fmt, tmp_path / file_name.format(suffix=fmt.suffixes[0]), sigmoid_mse())
    assert claimants(path) == [name]
    assert checkpoint.describe(path)["file_format"] == fmt.syntax.lower()


def test_formats_sharing_a_suffix_or_first_bytes_tell_their_files_apart_by_content():
    """Two records that fit the same files (a suffix or first bytes in common) must each have a
    ``claims``; a record without one owns its suffix and first bytes alone."""
    for a in checkpoint.FORMATS:
        for b in checkpoint.FORMATS:
            if a is not b and (set(a.suffixes) & set(b.suffixes) or a.magic == b.magic):
                assert a.claims is not None and b.claims is not None, (a.name, b.name)
            assert a is b or a.name != b.name


def test_a_converted_network_is_shown_as_the_file_it_is(tmp_path):
    """A Rust network converted to gpumlp npz keeps ``imported_from`` in its metadata; ``info``
    showed it as "Rust MLP JSON" holding "layers, weights, biases and activation_function", with
    the gpumlp versions that converted it. Now the file's own format decides."""
    write(interop.RUST, tmp_path / "r.json", sigmoid_mse())
    checkpoint.convert(tmp_path / "r.json", tmp_path / "c.npz")
    d = checkpoint.describe(tmp_path / "c.npz")
    assert d["imported_from"] == "rust" and "holds" not in d and "format_label" not in d
    assert (d["format"], d["version"], d["file_format"]) == ("gpumlp-checkpoint", 1, "npz")
    result = CliRunner().invoke(cli.app, ["info", str(tmp_path / "c.npz")])
    assert result.exit_code == 0, result.output
    assert "(npz, format version 1," in result.output and "Rust MLP JSON" not in result.output


def test_a_file_two_formats_claim_is_one_clear_error(tmp_path, monkeypatch):
    greedy = Format("greedy", "Greedy JSON", "JSON", (".json",), b"{", interop.RUST.read, interop.RUST.write,
                    claims=lambda source: True)  # fmt: skip
    monkeypatch.setattr(checkpoint, "FORMATS", (*checkpoint.FORMATS, greedy))
    path = write(interop.RUST, tmp_path / "r.json", sigmoid_mse())
    with pytest.raises(CheckpointError, match="has the keys of Rust MLP JSON and Greedy JSON at once"):
        checkpoint.load(path)


# ---------------------------------------------------------------- a fifth format, in the table only

TOY_MAGIC = b"TOY1\n"


def read_toy(source: Source) -> tuple[dict, dict]:
    """``TOY1`` then JSON ``{"sizes": [...], "params": {"W0": [[...]], …}}``, W as gpumlp lays it out."""
    data = source.f.read()
    doc = json.loads(data[len(TOY_MAGIC) :])
    sizes = check_sizes(doc, "sizes", f"{source.path}: toy")
    params = get(doc, "params", f"{source.path}: toy")
    host = {k: np.array(params[k], dtype=np.float64) for k in sorted(params)}
    meta = dict(imported_from="toy", sizes=list(sizes), activation="sigmoid", loss="mse", init=None)
    return dict(meta, dtype="float64", input_divisor=255.0), host


def write_toy(path, meta: dict, host: dict, state: dict) -> None:
    doc = {"sizes": meta["sizes"], "params": {k: np.asarray(v, np.float64).tolist() for k, v in host.items()}}
    atomic_write(path, lambda f: f.write(TOY_MAGIC + json.dumps(doc).encode()))


TOY = Format("toy", "Toy network", "toy", (".toy",), TOY_MAGIC, read_toy, write_toy, holds="sizes and params")


def test_a_format_added_to_the_table_works_in_load_convert_and_info(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "FORMATS", (*checkpoint.FORMATS, TOY))
    model = sigmoid_mse()
    source = checkpoint.save(tmp_path / "m.npz", model)
    runner = CliRunner()
    result = runner.invoke(cli.app, ["convert", str(source), str(tmp_path / "net.toy"), "--to", "toy"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "net.toy").read_bytes().startswith(TOY_MAGIC)
    (tmp_path / "net").write_bytes((tmp_path / "net.toy").read_bytes())  # no suffix: found by its first bytes
    for path in (tmp_path / "net.toy", tmp_path / "net"):
        loaded, meta = checkpoint.load(path)
        assert meta["imported_from"] == "toy"
        np.testing.assert_array_equal(loaded.theta, model.theta)
    result = runner.invoke(cli.app, ["info", str(tmp_path / "net")])
    assert result.exit_code == 0, result.output
    assert "(Toy network," in result.output and "file holds     sizes and params" in result.output
    checkpoint.convert(tmp_path / "net", tmp_path / "back.json")
    np.testing.assert_array_equal(checkpoint.load(tmp_path / "back.json")[0].theta, model.theta)
    with pytest.raises(CheckpointError, match="choose gpumlp, rust, nielsen or toy"):
        checkpoint.convert(source, tmp_path / "x.toy", to="onnx")
    with pytest.raises(CheckpointError, match=r"the toy format is toy; name the file \.toy"):
        checkpoint.convert(source, tmp_path / "x.json", to="toy")


def test_format_modules_neither_build_networks_nor_import_the_table():
    """Only checkpoint.py builds an MLP from a file and holds the table: the modules with records
    import neither gpumlp.formats.checkpoint nor the MLP class (so adding a record cannot make a cycle)."""
    import ast
    from pathlib import Path

    package = Path(checkpoint.__file__).parent
    for module in ("base", "native", "interop"):
        tree = ast.parse((package / f"{module}.py").read_text())
        imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
        modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "MLP" not in imported and "checkpoint" not in imported, module
        assert "gpumlp.formats.checkpoint" not in modules, module


@pytest.mark.parametrize("target, to", [("out.json", "gpumlp"), ("out.npz", "gpumlp"), ("rust.json", "rust")])
def test_a_late_write_error_in_convert_names_its_target_not_train_s_save(tmp_path, monkeypatch, capsys, target, to):
    """A full disk when convert writes (the temporary file cannot be made, after every check
    passed): the fix names convert's TARGET. It said "choose another --save path", an option
    convert does not have, and train's own writes still say it."""
    source = checkpoint.save(tmp_path / "m.npz", sigmoid_mse())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and Path(dir) == out_dir:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_mkstemp(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    code, out, err = run_main(monkeypatch, capsys, "convert", source, out_dir / target, "--to", to)
    assert code == 2 and out == ""
    what = "a file" if to == "rust" else "a checkpoint"
    assert err == f"error: cannot write {what} in {out_dir}: No space left on device; choose another TARGET\n"
    assert list(out_dir.iterdir()) == []
    with pytest.raises(CheckpointError, match="choose another --save path$"):  # outside convert: train's words
        checkpoint.save(out_dir / "m.npz", sigmoid_mse())
