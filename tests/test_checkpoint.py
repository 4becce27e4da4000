"""Checkpoints: exact round trips in both formats, host copies, atomic writes, clear refusals."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import gpumlp
from gpumlp.errors import CheckpointError, ConfigError
from gpumlp.formats import checkpoint
from gpumlp.model import MLP


def trained_like(dtype="float32", seed=1) -> MLP:
    """A model whose parameters have full-precision, non-round values."""
    model = MLP((784, 12, 10), "relu", "ce", seed=seed, dtype=dtype)
    model.theta *= 1 + np.float32(1e-3) * np.arange(model.theta.size, dtype=model.theta.dtype) % 7
    return model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_round_trip_is_bit_exact(tmp_path, dtype, suffix, device):
    model = trained_like(dtype)
    path = checkpoint.save(tmp_path / f"m{suffix}", model, test_accuracy=0.5)
    loaded, meta = checkpoint.load(path, device=device)
    assert (loaded.sizes, loaded.activation, loaded.loss, loaded.dtype) == ((784, 12, 10), "relu", "ce", dtype)
    for k, P in model.params.items():
        Q = loaded.be.to_numpy(loaded.params[k])
        assert Q.dtype == P.dtype
        np.testing.assert_array_equal(Q.view(np.uint8), P.view(np.uint8))  # bit for bit
    assert meta["test_accuracy"] == 0.5 and meta["format"] == "gpumlp-checkpoint" and meta["version"] == 1


def test_npz_and_json_load_to_identical_parameters(tmp_path):
    model = trained_like()
    a, _ = checkpoint.load(checkpoint.save(tmp_path / "m.npz", model))
    b, _ = checkpoint.load(checkpoint.save(tmp_path / "m.json", model))
    np.testing.assert_array_equal(a.theta, b.theta)


def test_npz_is_readable_with_numpy_alone(tmp_path):
    model = trained_like()
    checkpoint.save(tmp_path / "m.npz", model, history=[{"epoch": 1}])
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert set(z.files) == {"metadata", "W0", "b0", "W1", "b1"}
        meta = json.loads(z["metadata"].tobytes().decode("utf-8"))
        np.testing.assert_array_equal(z["W0"], model.params["W0"])
    assert meta["sizes"] == [784, 12, 10] and meta["history"] == [{"epoch": 1}]
    assert meta["versions"]["numpy"] == np.__version__ and meta["device"] == "cpu"
    assert "blas" not in meta  # only a training run says which BLAS trained it (gpumlp.training.run.run)


def test_save_leaves_no_temporary_files_and_replaces_atomically(tmp_path):
    model = trained_like()
    checkpoint.save(tmp_path / "m.npz", model)
    checkpoint.save(tmp_path / "m.npz", trained_like(seed=2))
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = checkpoint.save(tmp_path / "m.npz", trained_like())
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(CheckpointError, match="No space left on device"):
        checkpoint.save(path, trained_like(seed=2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_check_writable_refuses_bad_paths_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a writable folder"):
        checkpoint.check_writable(tmp_path / "file" / "m.npz")
    with pytest.raises(CheckpointError, match="must end in .npz or .json"):
        checkpoint.check_writable(tmp_path / "m.pt")
    assert checkpoint.check_writable(tmp_path / "new" / "dir" / "m.npz") == tmp_path / "new" / "dir" / "m.npz"


def _npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _meta(**over) -> np.ndarray:
    meta = {"format": "gpumlp-checkpoint", "version": 1, "sizes": [784, 10], "activation": "sigmoid"}
    meta.update({"loss": "mse", "init": "xavier", "dtype": "float32"}, **over)
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


GOOD = {"W0": np.zeros((784, 10), np.float32), "b0": np.zeros(10, np.float32)}


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda p: _npz(p, metadata=_meta(), W0=GOOD["W0"], b0=np.zeros(9, np.float32)), r"b0 has shape \(9,\)"),
        (lambda p: _npz(p, metadata=_meta(), W0=GOOD["W0"]), "do not match the layers"),
        (lambda p: _npz(p, metadata=_meta(), extra=GOOD["b0"], **GOOD), "do not match the layers"),
        (lambda p: _npz(p, metadata=_meta(version=99), **GOOD), "version 99"),
        (lambda p: _npz(p, metadata=_meta(format="other"), **GOOD), "not a gpumlp checkpoint"),
        (lambda p: _npz(p, metadata=_meta(), W0=GOOD["W0"].astype(np.float64), b0=GOOD["b0"]), "float64"),
        (lambda p: _npz(p, metadata=_meta(), W0=np.full((784, 10), np.nan, np.float32), b0=GOOD["b0"]), "NaN or Inf"),
        (lambda p: _npz(p, **GOOD), "no metadata"),
        (
            lambda p: _npz(p, metadata=_meta(), W0=np.array([object()] * 7840).reshape(784, 10), b0=GOOD["b0"]),
            "pickled Python objects; refused without unpickling",
        ),
    ],
)
def test_malformed_npz_is_a_clear_error(tmp_path, make, fragment):
    path = make(tmp_path / "bad.npz")
    with pytest.raises(CheckpointError, match=fragment):
        checkpoint.load(path)


def test_truncated_npz_and_bad_json_and_missing_file(tmp_path):
    good = checkpoint.save(tmp_path / "m.npz", trained_like())
    (tmp_path / "t.npz").write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="damaged or truncated|not a readable"):
        checkpoint.load(tmp_path / "t.npz")
    (tmp_path / "b.json").write_text('{"format": "gpumlp-checkpoint", "params": {')
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path / "b.json")
    (tmp_path / "w.json").write_text(json.dumps(dict(json.loads(_meta().tobytes()), params={"W0": "x", "b0": []})))
    with pytest.raises(CheckpointError, match="W0 is not an array of numbers"):
        checkpoint.load(tmp_path / "w.json")
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "none.npz")
    assert zipfile.is_zipfile(good)


def test_writer_killed_mid_save_leaves_previous_checkpoint_intact(tmp_path):
    """SIGKILL a process while it writes (made slow by patching np.savez in that process): the
    previous checkpoint still loads unchanged, and the leftover is a hidden .tmp, never a checkpoint."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "m.npz"
    checkpoint.save(path, trained_like())
    before = path.read_bytes()
    code = (
        "import sys, time, numpy as np\n"
        "from gpumlp.formats import checkpoint\n"
        "from gpumlp.model import MLP\n"
        "real = np.savez\n"
        "def slow(f, **arrays):\n"
        "    f.write(b'PK partial'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
        "np.savez = slow\n"
        "checkpoint.save(sys.argv[1], MLP((784, 12, 10), seed=9))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert path.read_bytes() == before
    model, _ = checkpoint.load(path)
    np.testing.assert_array_equal(model.theta, trained_like().theta)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "m.npz"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".m.npz.") and leftovers[0].endswith(".tmp")
    with pytest.raises(CheckpointError, match="damaged or truncated"):  # read by its first bytes: "PK"
        checkpoint.load(tmp_path / leftovers[0])


def test_the_public_save_and_load(tmp_path):
    model = trained_like()
    gpumlp.save(tmp_path / "m.json", model, note="hello")
    loaded, _ = gpumlp.load(tmp_path / "m.json", device="cpu")
    np.testing.assert_array_equal(loaded.theta, model.theta)
    assert checkpoint.read_metadata(tmp_path / "m.json")["note"] == "hello"


def test_deeply_nested_or_enormous_json_and_npz_are_refused(tmp_path, monkeypatch):
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        checkpoint.load(nested)
    big = checkpoint.save(tmp_path / "big.json", trained_like())
    monkeypatch.setattr(checkpoint, "MAX_JSON_BYTES", big.stat().st_size - 1)
    with pytest.raises(CheckpointError, match="more than any gpumlp network"):
        checkpoint.load(big)
    # an npz whose header declares a 10^12-element array: refused from the header alone
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("metadata.npy", "w") as f:
            np.lib.format.write_array(f, _meta())
        with zf.open("b0.npy", "w") as f:
            np.lib.format.write_array(f, GOOD["b0"])
        header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}
        with zf.open("W0.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b"\0" * 64)
    with pytest.raises(CheckpointError, match="W0 declares 4,000,000,000,000 bytes"):
        checkpoint.load(path)


def test_nothing_non_finite_is_ever_written(tmp_path):
    model = trained_like()
    model.params["b1"][3] = np.nan
    with pytest.raises(CheckpointError, match="b1 contains NaN or Inf"):
        checkpoint.save(tmp_path / "m.npz", model)
    assert not any(tmp_path.iterdir())


def test_an_npy_header_cut_mid_expression_is_one_error(tmp_path):
    """numpy parses npy headers with tokenize: an unbalanced header raised tokenize.TokenError, a
    traceback (found by flipping bytes of a real npz)."""
    import struct

    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (10,"
    text += b" " * (64 - 10 - len(text) - 1) + b"\n"
    path = tmp_path / "cut.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.npy", _npy(_meta()))
        zf.writestr("W0.npy", _npy(GOOD["W0"]))
        zf.writestr("b0.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(path)


def _npy(arr) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    return buf.getvalue()


def test_save_refuses_metadata_that_would_replace_the_networks_own_keys(tmp_path):
    """Before: gpumlp.save(path, model, format="json", sizes=[1]) wrote a file that could not be loaded."""
    model = MLP((784, 8, 10))
    with pytest.raises(ConfigError, match=r"save\(\) got metadata 'format', 'sizes': these keys describe the network"):
        checkpoint.save(tmp_path / "m.npz", model, format="json", sizes=[1])
    assert not (tmp_path / "m.npz").exists()
    checkpoint.save(tmp_path / "m.npz", model, note="mine")  # other keys are kept as given
    assert checkpoint.read_metadata(tmp_path / "m.npz")["note"] == "mine"


def test_loading_draws_no_initial_weights(tmp_path, monkeypatch):
    """A loaded network is built from the file's parameters: no float64 starting weights are drawn
    only to be overwritten (for a large network that would cost several times the file's size)."""
    model = trained_like()
    path = gpumlp.save(tmp_path / "m.npz", model)
    rust = tmp_path / "rust.json"
    checkpoint.convert(gpumlp.save(tmp_path / "s.npz", MLP((784, 12, 10), "sigmoid", "mse")), rust, to="rust")

    def refuse(*args, **kwargs):
        raise AssertionError("init_params called while loading")

    monkeypatch.setattr("gpumlp.model.init_params", refuse)
    np.testing.assert_array_equal(gpumlp.load(path)[0].theta, model.theta)
    assert gpumlp.load(rust)[0].sizes == (784, 12, 10)
