"""Adding an activation is one record: leaky ReLU with slope 0.1, written and registered in this
module only (``activations.registered``). Its derivative against finite differences, training
through the library and the CLI (``--activation leaky-relu``), save, load and resume bit for bit,
``gpumlp test``/``info``, ONNX export (``LeakyRelu`` with its ``alpha``) run by onnxruntime, and
its CUDA expressions compiled and run by the host kernel harness inside CupyBackend's methods."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import gpumlp
from gpumlp import activations
from gpumlp.activations import ACTIVATIONS, Activation
from gpumlp.backends.cpu import CPU
from gpumlp.cli import commands as cli
from gpumlp.errors import ConfigError
from gpumlp.formats import checkpoint
from gpumlp.model import MLP
from standins.gradcheck import numerical_grad
from standins.variant_run import invoke, resumed_and_straight, train_args

runner = CliRunner()
OPTIONS = ("--activation", "leaky-relu", "--loss", "ce")  # the variant under test, on every train command line
SLOPE = 0.1  # not ONNX's default alpha (0.01): an export that dropped the attribute would disagree


def leaky_relu(xp, Z):
    return xp.maximum(Z, Z * SLOPE, out=Z)  # z for z > 0, 0.1 z below: in place on the temporary Z


def leaky_relu_grad(xp, A):
    return xp.where(A > 0, 1.0, SLOPE).astype(A.dtype)  # f(z) > 0 exactly where z > 0


LEAKY = Activation(leaky_relu, leaky_relu_grad, "he", f"x > T(0) ? x : T({SLOPE}) * x",
                   f"a > T(0) ? T(1) : T({SLOPE})", "LeakyRelu", {"alpha": SLOPE})  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def leaky():
    """leaky-relu registered for this module's tests (before the host harness compiles every
    kernel), then unregistered: gpumlp is as before."""
    with activations.registered("leaky-relu", LEAKY):
        yield LEAKY
    assert "leaky-relu" not in ACTIVATIONS


def test_its_derivative_matches_finite_differences_in_float64():
    z, h = np.linspace(-6, 6, 241) + 1e-3, 1e-6  # no kink on the grid
    numeric = (leaky_relu(np, z + h) - leaky_relu(np, z - h)) / (2 * h)
    np.testing.assert_allclose(leaky_relu_grad(np, leaky_relu(np, z.copy())), numeric, rtol=1e-6, atol=1e-8)
    rng = np.random.default_rng(0)
    X, y = rng.random((5, 784)), rng.integers(0, 10, 5)
    model = MLP((784, 6, 10), "leaky-relu", "ce", seed=1, dtype="float64")
    assert model.init == "he"  # the record's default
    _, grads = model.loss_and_grads(X, y)
    for key, index in (("W0", (300, 2)), ("b0", (4,)), ("W1", (3, 7)), ("b1", (2,))):
        assert grads["d" + key][index] == pytest.approx(numerical_grad(model, X, y, key, index), rel=1e-6)


def test_it_trains_through_the_library_api(mnist):
    X, y, X_test, y_test = mnist
    model = gpumlp.MLP((784, 32, 10), "leaky-relu", "ce", seed=0)
    gpumlp.fit(model, X[:4000], y[:4000], epochs=3, batch_size=16, lr=0.1, seed=1)
    assert gpumlp.evaluate(model, X_test[:2000], y_test[:2000]) > 0.85


def test_trained_saved_resumed_tested_and_exported_through_the_cli(mnist, mnist_dir, tmp_path):
    """Saved after 1 epoch and resumed to 2, the run equals an uninterrupted 2-epoch run bit for
    bit; ``info``/``test`` read it; the ONNX graph (LeakyRelu, alpha 0.1) agrees with onnxruntime."""
    part, resumed, meta, straight = resumed_and_straight(mnist_dir, tmp_path, *OPTIONS)
    assert resumed.activation == meta["activation"] == "leaky-relu" and meta["train_state"]["epochs_done"] == 2
    np.testing.assert_array_equal(resumed.theta, straight.theta)
    assert json.loads(invoke(["info", str(part), "--json"]).output)["activation"] == "leaky-relu"
    report = invoke(["test", str(part), "--data-dir", str(mnist_dir), "--test-size", "1000", "--json"]).output
    assert json.loads(report)["accuracy"] > 0.8

    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")
    onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
    invoke(["export", str(part), str(tmp_path / "leaky.onnx")])
    [node] = [n for n in onnx.load(str(tmp_path / "leaky.onnx")).graph.node if n.op_type == "LeakyRelu"]
    assert [(a.name, a.f) for a in node.attribute] == [("alpha", pytest.approx(SLOPE))]
    session = ort.InferenceSession(str(tmp_path / "leaky.onnx"), providers=["CPUExecutionProvider"])
    _, _, X_test, _ = mnist
    pixels = np.rint(X_test[:300] * 255).astype(np.float32)
    P = session.run(["probabilities"], {"pixels": pixels})[0]
    np.testing.assert_allclose(P, resumed.be.to_numpy(resumed.predict_proba(X_test[:300])), atol=1e-5)
    Z = X_test[:300] @ resumed.be.to_numpy(resumed.params["W0"]) + resumed.be.to_numpy(resumed.params["b0"])
    assert (Z < 0).mean() > 0.1  # the negative slope was exercised, not only the identity half


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_its_cuda_kernels_match_the_numpy_record_on_the_host_harness(host_cuda, dropout):
    """Two float64 epochs with every fused kernel of CupyBackend, leaky-relu's bias+activation and
    (masked) gradient included, in the harness's host build, against the numpy record."""
    rng = np.random.default_rng(0)
    X, y = rng.random((120, 784)), rng.integers(0, 10, 120)  # zero-mean weights: both halves of f
    thetas = []
    for backend in (CPU, host_cuda):
        m = MLP((784, 16, 10), "leaky-relu", "ce", seed=1, device=backend, dtype="float64")
        gpumlp.fit(m, X, y, epochs=2, batch_size=10, lr=0.05, seed=2, optimizer="sgd", dropout=dropout)
        thetas.append(backend.to_numpy(m.theta))
    np.testing.assert_allclose(thetas[1], thetas[0], rtol=1e-9, atol=1e-11)
    Z = rng.standard_normal((7, 5))
    b = rng.standard_normal(5)
    np.testing.assert_allclose(host_cuda.bias_act(Z.copy(), b, LEAKY), CPU.bias_act(Z.copy(), b, LEAKY), rtol=1e-15)


def test_help_registry_and_metadata_name_it_while_it_is_registered(mnist_dir, tmp_path):
    def train_help() -> str:
        result = runner.invoke(cli.app, ["train", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
        assert result.exit_code == 0, result.output
        return " ".join(result.output.replace("│", " ").split())

    assert "Hidden activation: sigmoid, relu, tanh, leaky-relu (" in train_help()
    assert "he for relu/leaky-relu" in train_help()  # --init's default, from the record
    with pytest.raises(ConfigError, match="an activation named 'leaky-relu' is already registered"):
        activations.register("leaky-relu", LEAKY)
    save = checkpoint.save(tmp_path / "l.json", MLP((784, 8, 10), "leaky-relu", "ce", seed=0))
    activations.unregister("leaky-relu")
    try:
        assert "leaky-relu" not in train_help()
        result = runner.invoke(cli.app, ["info", str(save)])
        assert result.exit_code == 2 and "activation must be one of sigmoid, relu, tanh" in result.output, result.output
        with pytest.raises(ConfigError, match="unknown activation 'leaky-relu': choose one of sigmoid, relu, tanh"):
            MLP((784, 10), "leaky-relu")
        result = runner.invoke(cli.app, train_args(mnist_dir, tmp_path / "x.npz", 1, *OPTIONS))
        assert result.exit_code == 2 and "unknown activation 'leaky-relu'" in result.output, result.output
        assert not (tmp_path / "x.npz").exists()
    finally:
        activations.register("leaky-relu", LEAKY)
