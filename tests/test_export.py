"""ONNX export (gpumlp.formats.export, `gpumlp export`), checked by a real client: onnxruntime on all
10,000 MNIST test images must give gpumlp predict's digits, and its probabilities within 1e-5."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp.activations import ACTIVATIONS
from gpumlp.cli import commands as cli
from gpumlp.cli.predict import predict_images
from gpumlp.formats import export
from gpumlp.model import MLP
from gpumlp.training.loop import fit
from standins.entry_point import run_main

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED = sorted(CHECKPOINTS.glob("gpumlp-*.npz"))
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def test_set(mnist):
    """MNIST's test images as gpumlp sees them (n, 784) in [0, 1], as raw pixels 0–255, and labels."""
    _, _, X, y = mnist
    return X, np.rint(X * 255).astype(np.float32), y


def onnx_probabilities(path: Path, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    return session.run(["probabilities"], {"pixels": pixels})[0]  # (n, 10)


def assert_agrees(model, onnx_path: Path, X, pixels) -> float:
    """onnxruntime on raw pixels vs gpumlp's predict on the same images; returns the max |Δp|."""
    P = onnx_probabilities(onnx_path, pixels)
    ours = predict_images(model, list(X))
    digits = np.array([r["digit"] for r in ours])
    Q = np.array([r["probabilities"] for r in ours])  # (n, 10)
    assert P.shape == Q.shape == (len(X), 10) and P.dtype == np.float32
    assert np.array_equal(P.argmax(axis=1), digits), f"{(P.argmax(axis=1) != digits).sum()} predictions differ"
    diff = float(np.abs(P - Q).max())
    assert diff < TOLERANCE, diff
    return diff


def test_the_two_shipped_networks_agree_on_all_test_images(tmp_path, test_set, capsys):
    assert len(SHIPPED) == 2
    X, pixels, y = test_set
    assert len(X) == 10_000
    for checkpoint in SHIPPED:
        target = tmp_path / f"{checkpoint.stem}.onnx"
        result = cli_export(checkpoint, target)
        assert "input 'pixels'" in result
        model, meta = gpumlp.load(checkpoint)
        diff = assert_agrees(model, target, X, pixels)
        accuracy = (onnx_probabilities(target, pixels).argmax(axis=1) == y).mean()
        assert accuracy == pytest.approx(meta["test_accuracy"], abs=1e-9)
        print(f"{checkpoint.name}: max |Δp| {diff:.2e}, onnxruntime accuracy {accuracy:.4f}")


def cli_export(checkpoint, target) -> str:
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli.app, ["export", str(checkpoint), str(target)])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_every_activation_and_loss_agrees_on_all_test_images(tmp_path, mnist, test_set, activation, loss):
    """A small network of each kind, trained briefly (so its outputs are spread like a real one's)."""
    X_train, y_train, *_ = mnist
    X, pixels, y = test_set
    model = MLP((784, 24, 10), activation, loss, seed=1)
    fit(model, X_train[:3000], y_train[:3000], epochs=1, batch_size=10, lr=0.5 if loss == "mse" else 0.05, seed=0)
    checkpoint = gpumlp.save(tmp_path / "small.npz", model)
    model, _ = gpumlp.load(checkpoint)
    target = tmp_path / "small.onnx"
    cli_export(checkpoint, target)
    assert (model.be.to_numpy(model.predict(X)) == y).mean() > 0.5, "the briefly trained network learnt nothing"
    diff = assert_agrees(model, target, X, pixels)
    print(f"784-24-10 {activation} {loss}: max |Δp| {diff:.2e}")
    if loss == "mse":  # the graph divides its sigmoids by their sum, as gpumlp predict reports them
        assert np.allclose(onnx_probabilities(target, pixels[:100]).sum(axis=1), 1.0, atol=1e-6)


def test_a_rust_json_network_exports_with_its_own_input_scaling(tmp_path, test_set):
    """Imported networks see pixel / 256: the graph divides by 256 and agrees with gpumlp on them."""
    X, pixels, _ = test_set
    trained = MLP((784, 16, 10), "sigmoid", "mse", seed=3)
    fit(trained, X[:2000], test_set[2][:2000], epochs=1, batch_size=10, lr=3.0, seed=0)
    gpumlp.formats.checkpoint.convert(gpumlp.save(tmp_path / "a.npz", trained), tmp_path / "rust.json", to="rust")
    cli_export(tmp_path / "rust.json", tmp_path / "rust.onnx")
    model, meta = gpumlp.load(tmp_path / "rust.json")
    assert model.input_divisor == 256.0 and meta["imported_from"] == "rust"
    proto = onnx.load(tmp_path / "rust.onnx")
    assert onnx.numpy_helper.to_array(proto.graph.initializer[0]) == np.float32(256)
    assert "divides them by 256" in proto.doc_string
    print(f"Rust JSON 784-16-10: max |Δp| {assert_agrees(model, tmp_path / 'rust.onnx', X, pixels):.2e}")


def test_the_graph_is_standard_documented_and_batch_dynamic(tmp_path, test_set):
    X, pixels, _ = test_set
    target = tmp_path / "m.onnx"
    cli_export(SHIPPED[0], target)
    proto = onnx.load(target)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == export.OPSET and proto.ir_version == export.IR_VERSION
    assert proto.producer_name == "gpumlp"
    assert [n.op_type for n in proto.graph.node] == ["Div", "Gemm", "Relu", "Gemm", "Softmax"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 784
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["input_divisor"] == "255" and props["test_accuracy"] == "0.98" and props["loss"] == "ce"
    assert "raw pixel values 0-255" in proto.doc_string and "softmax" in proto.doc_string
    one = onnx_probabilities(target, pixels[:1])
    three = onnx_probabilities(target, pixels[:3])
    assert one.shape == (1, 10) and three.shape == (3, 10)
    assert np.allclose(one[0], three[0], atol=1e-7)


def test_the_checker_runs_before_anything_is_written(tmp_path, monkeypatch, capsys):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"an older export")

    def refuse(proto, full_check=False):
        raise onnx.checker.ValidationError("Node (layer0) has input size 3 not in range [min=2, max=2]")

    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    code, out, err = run_main(monkeypatch, capsys, "export", str(SHIPPED[0]), str(target))
    assert code == 2 and err.count("\n") == 1 and "onnx.checker refused the graph" in err
    assert target.read_bytes() == b"an older export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"], "a temporary file was left behind"


def big_float64_checkpoint(path: Path) -> Path:
    model = MLP((784, 4, 10), "relu", "ce", dtype="float64")
    model.params["W0"][0, 0] = 1e39  # a float64 nothing in float32 can hold
    return gpumlp.save(path, model)


@pytest.mark.parametrize(
    "case,fragment",
    [
        ("suffix", "an ONNX file's name ends in .onnx"),
        ("missing", "not found"),
        ("overflow", "W0 holds values beyond float32's range"),
        ("too-big", "more than one .onnx file holds (2 GiB)"),
        ("activation", "gelu hidden units with ce output have no ONNX export"),
        ("no-onnx", "pip install 'gpumlp[onnx]'"),
        ("folder", "is not a writable folder"),
    ],
)
def test_export_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys, case, fragment):
    source, target = SHIPPED[0], tmp_path / "out" / "m.onnx"
    if case == "suffix":
        target = tmp_path / "m.pt"
    elif case == "missing":
        source = tmp_path / "nothing.npz"
    elif case == "overflow":
        source = big_float64_checkpoint(tmp_path / "big.json")
    elif case == "too-big":
        monkeypatch.setattr(export, "MAX_PROTO_BYTES", 100_000)
    elif case == "activation":  # an activation added to gpumlp without an ONNX operator
        real = gpumlp.formats.checkpoint.load

        def load_as_gelu(path):
            model, meta = real(path)
            model.activation = "gelu"
            return model, meta

        monkeypatch.setattr(gpumlp.formats.checkpoint, "load", load_as_gelu)
    elif case == "no-onnx":
        monkeypatch.setitem(sys.modules, "onnx", None)
    elif case == "folder":
        (tmp_path / "out").write_text("a file where the folder should be")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, out, err = run_main(monkeypatch, capsys, "export", str(source), str(target))
    assert code == 2, out + err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in out + err
    assert fragment in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "a failed export left a file behind"
