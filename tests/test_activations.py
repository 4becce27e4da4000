"""Activations as records (gpumlp/activations.py): each record's derivative against finite
differences, and an activation added as one record working everywhere a user meets it."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import gpumlp
from gpumlp import activations
from gpumlp.activations import ACTIVATIONS, Activation
from gpumlp.cli import commands as cli
from gpumlp.model import MLP
from standins.gradcheck import numerical_grad

runner = CliRunner()


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_each_derivative_matches_finite_differences_of_its_function(name):
    """grad(f(z)) = f'(z), from the output as backward uses it (float64, z over ±6)."""
    act, z, h = ACTIVATIONS[name], np.linspace(-6, 6, 241) + 1e-3, 1e-6  # (no kink of relu on the grid)
    numeric = (act.f(np, z + h) - act.f(np, z - h)) / (2 * h)
    np.testing.assert_allclose(act.grad(np, act.f(np, z.copy())), numeric, rtol=1e-6, atol=1e-8)


def test_every_record_is_complete():
    for name, act in ACTIVATIONS.items():
        assert act.default_init in gpumlp.model.INITS, name
        assert "x" in act.cuda_f and "a" in act.cuda_grad, name


def softplus(xp, Z):
    return xp.log1p(xp.exp(Z), out=Z)  # log(1 + e^z); z stays small in these tests


def softplus_grad(xp, A):
    return 1 - xp.exp(-A)  # f'(z) = σ(z) = 1 − e^{−f(z)}


SOFTPLUS = Activation(softplus, softplus_grad, "xavier", "log1p(exp(x))", "T(1) - exp(-a)", "Softplus")


@pytest.fixture
def with_softplus(monkeypatch):
    """gpumlp with one more record in ACTIVATIONS, and nothing else changed."""
    monkeypatch.setitem(ACTIVATIONS, "softplus", SOFTPLUS)


def test_an_added_record_trains_tests_and_exports(with_softplus, mnist, mnist_dir, tmp_path):
    """One record is all a new activation needs: its gradients are right, the CLI trains and tests
    with it, the checkpoint records and reloads it, and the ONNX export agrees with onnxruntime."""
    rng = np.random.default_rng(0)
    X, y = rng.random((5, 784)), rng.integers(0, 10, 5)
    model = MLP((784, 6, 10), "softplus", "ce", seed=1, dtype="float64")
    _, grads = model.loss_and_grads(X, y)
    for key, index in (("W0", (300, 2)), ("b0", (4,)), ("W1", (3, 7))):
        assert grads["d" + key][index] == pytest.approx(numerical_grad(model, X, y, key, index), rel=1e-6)

    save = tmp_path / "softplus.npz"
    args = ["train", "--activation", "softplus", "--layers", "784,32,10", "--loss", "ce", "--lr", "0.1",
            "--epochs", "1", "--train-size", "5000", "--val-size", "0", "--test-size", "2000",
            "--data-dir", str(mnist_dir), "--save", str(save)]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    loaded, meta = gpumlp.load(save)
    assert loaded.activation == meta["activation"] == "softplus"
    result = runner.invoke(cli.app, ["test", str(save), "--data-dir", str(mnist_dir), "--json"])
    assert result.exit_code == 0, result.output
    _, _, X_test, y_test = mnist
    assert (loaded.be.to_numpy(loaded.predict(X_test[:2000])) == y_test[:2000]).mean() > 0.8

    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    result = runner.invoke(cli.app, ["export", str(save), str(tmp_path / "softplus.onnx")])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(tmp_path / "softplus.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.rint(X_test[:500] * 255).astype(np.float32)
    P = session.run(["probabilities"], {"pixels": pixels})[0]
    ours = loaded.be.to_numpy(loaded.predict_proba(X_test[:500]))
    np.testing.assert_allclose(P, ours, atol=1e-5)


def test_the_train_help_lists_every_record():
    result = runner.invoke(cli.app, ["train", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0 and activations.choices() in result.output
    assert all(name in activations.choices() for name in ACTIVATIONS)
