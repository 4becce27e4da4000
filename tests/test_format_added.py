"""Adding a checkpoint format is one record: a plain-text format (``.txt``), written and registered
in this module only (``checkpoint.registered``). ``gpumlp convert`` writes it (``--to text``)
and reads it back, ``gpumlp info`` and ``gpumlp test`` read it, and ``convert --help`` names it
while it is registered."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import gpumlp
from gpumlp.cli import commands as cli
from gpumlp.errors import CheckpointError
from gpumlp.formats import checkpoint
from gpumlp.formats.atomic import atomic_write
from gpumlp.formats.base import Format, Source, check_sizes, get

runner = CliRunner()
MAGIC = b"gpumlp-text 1\n"
KEYS = ("sizes", "activation", "loss", "input_divisor")  # the header: what building the network needs


def read_text(source: Source) -> tuple[dict, dict]:
    """``MAGIC``, a JSON header of ``KEYS``, then per parameter a line ``NAME d0 [d1]`` and a line
    of its values (row-major, repr floats)."""
    name = f"{source.path}: plain text"
    lines = source.f.read().decode("utf-8").splitlines()
    header = json.loads(lines[1])
    sizes = check_sizes(header, "sizes", name)
    host = {}
    for shape_line, values in zip(lines[2::2], lines[3::2]):
        key, *shape = shape_line.split()
        host[key] = np.array([float(v) for v in values.split()], dtype=np.float64).reshape([int(d) for d in shape])
    meta = dict(imported_from="text", sizes=list(sizes), activation=get(header, "activation", name),
                loss=get(header, "loss", name), init=None, dtype="float64",
                input_divisor=get(header, "input_divisor", name))  # fmt: skip
    return meta, host


def write_text(path, meta: dict, host: dict, state: dict) -> None:
    lines = [MAGIC.decode().strip(), json.dumps({k: meta[k] for k in KEYS})]
    for key, A in host.items():
        A = np.asarray(A, dtype=np.float64)
        lines += [" ".join([key, *map(str, A.shape)]), " ".join(repr(float(v)) for v in A.ravel())]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


TEXT = Format("text", "gpumlp plain text", "text", (".txt",), MAGIC, read_text, write_text,
              holds="sizes, activation, loss, input divisor and parameters")  # fmt: skip


@pytest.fixture(autouse=True)
def text_format():
    with checkpoint.registered(TEXT):
        yield TEXT
    assert all(fmt.name != "text" for fmt in checkpoint.FORMATS)


def invoke(args: list[str], code: int = 0):
    result = runner.invoke(cli.app, args)
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    save = tmp_path_factory.mktemp("text") / "m.npz"
    invoke(["train", "--activation", "relu", "--loss", "ce", "--layers", "784,24,10", "--lr", "0.1",
            "--epochs", "1", "--train-size", "3000", "--val-size", "0", "--test-size", "0",
            "--data-dir", str(mnist_dir), "--save", str(save), "--quiet"])  # fmt: skip
    return save


def test_converted_to_and_from_it_and_read_by_info_and_test(trained, mnist_dir, tmp_path):
    net, back = tmp_path / "net.txt", tmp_path / "back.npz"
    invoke(["convert", str(trained), str(net), "--to", "text"])
    assert net.read_bytes().startswith(MAGIC)
    original, _ = gpumlp.load(trained)
    loaded, meta = gpumlp.load(net)
    assert meta["imported_from"] == "text" and (loaded.activation, loaded.loss) == ("relu", "ce")
    np.testing.assert_array_equal(loaded.theta, original.theta.astype(np.float64))  # repr floats: exact

    info = invoke(["info", str(net)]).output
    assert "(gpumlp plain text," in info and "sizes, activation, loss, input divisor and parameters" in info
    assert json.loads(invoke(["info", str(net), "--json"]).output)["sizes"] == [784, 24, 10]
    test_args = ["--data-dir", str(mnist_dir), "--test-size", "2000", "--json"]
    ours = json.loads(invoke(["test", str(net), *test_args]).output)["accuracy"]
    theirs = json.loads(invoke(["test", str(trained), *test_args]).output)["accuracy"]
    assert ours == pytest.approx(theirs, abs=1e-3) and ours > 0.8  # float64 vs float32: rounding apart

    invoke(["convert", str(net), str(back)])
    np.testing.assert_array_equal(gpumlp.load(back)[0].theta, original.theta)
    result = invoke(["convert", str(trained), str(tmp_path / "net.json"), "--to", "text"], code=2)
    assert "the text format is text; name the file .txt" in result.output
    (tmp_path / "odd").write_bytes(b"\x00\x01 no format's first bytes")
    result = invoke(["info", str(tmp_path / "odd")], code=2)
    assert "is not a network in any format gpumlp reads (npz, JSON or text; by name or first bytes)" in result.output


def test_convert_help_and_refusals_follow_the_registry(trained, tmp_path):
    def convert_help() -> str:
        result = runner.invoke(cli.app, ["convert", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
        assert result.exit_code == 0, result.output
        return " ".join(result.output.replace("│", " ").split())

    assert "or text (gpumlp plain text, .txt)" in convert_help()
    with pytest.raises(CheckpointError, match="a format named 'text' is already registered"):
        checkpoint.register(TEXT)
    net = tmp_path / "net.txt"
    invoke(["convert", str(trained), str(net), "--to", "text"])
    checkpoint.unregister("text")
    try:
        assert "text" not in convert_help() and "rust (Rust MLP JSON, .json) or nielsen" in convert_help()
        result = invoke(["convert", str(trained), str(tmp_path / "x.txt"), "--to", "text"], code=2)
        assert "unknown --to 'text': choose gpumlp, rust or nielsen" in result.output
        assert invoke(["info", str(net)], code=2).output.startswith("error: ")
    finally:
        checkpoint.register(TEXT)
