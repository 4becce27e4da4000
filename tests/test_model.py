"""The network's math: gradients against finite differences, outputs, initialisation, dtypes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from gpumlp.activations import ACTIVATIONS, relu_grad, sigmoid
from gpumlp.errors import ConfigError
from gpumlp.formats.checkpoint import load
from gpumlp.losses import LOSSES, softmax
from gpumlp.model import MLP, flatten, parse_sizes
from standins.gradcheck import numerical_grad

SMALL = (784, 6, 5, 10)


@pytest.mark.parametrize("activation,loss", list(itertools.product(ACTIVATIONS, LOSSES)))
def test_gradients_match_finite_differences(activation, loss, batch):
    """Backprop's gradient of the batch-mean loss equals central differences (rel. error < 1e-6)."""
    X, y = batch
    model = MLP(SMALL, activation, loss, init="normal" if activation != "relu" else "he", seed=3, dtype="float64")
    _, grads = model.loss_and_grads(X, y)
    rng = np.random.default_rng(0)
    for key, P in model.params.items():
        # every bias, and 40 random weights per matrix (all 784×6 would be slow, not stronger)
        flat = rng.choice(P.size, size=min(P.size, 40), replace=False)
        idx = [np.unravel_index(i, P.shape) for i in flat]
        analytic = np.array([grads["d" + key][i] for i in idx])
        numeric = np.array([numerical_grad(model, X, y, key, i) for i in idx])
        err = np.linalg.norm(analytic - numeric) / (np.linalg.norm(analytic) + np.linalg.norm(numeric))
        assert err < 1e-6, f"{activation}/{loss} d{key}: relative error {err:.2e}"


@pytest.mark.parametrize("loss", LOSSES)
def test_batch_gradient_is_mean_of_per_sample_gradients(loss, batch):
    """The loss is the mean over the batch: one batched call equals the average of n single calls."""
    X, y = batch
    model = MLP(SMALL, "sigmoid", loss, seed=1, dtype="float64")
    loss_b, grads_b = model.loss_and_grads(X, y)
    singles = [model.loss_and_grads(X[i : i + 1], y[i : i + 1]) for i in range(len(y))]
    assert loss_b == pytest.approx(np.mean([s[0] for s in singles]), rel=1e-12)
    for k, G in grads_b.items():
        np.testing.assert_allclose(G, np.mean([s[1][k] for s in singles], axis=0), rtol=1e-10, atol=1e-14)


def test_mse_loss_value_is_half_squared_error(batch):
    """mse = mean over the batch of ½‖σ(z) − onehot(y)‖², computed independently here."""
    X, y = batch
    model = MLP((784, 10), "sigmoid", "mse", seed=0, dtype="float64")
    W, b = model.params["W0"], model.params["b0"]
    A = 1 / (1 + np.exp(-(X @ W + b)))
    expected = np.mean(0.5 * np.sum((A - np.eye(10)[y]) ** 2, axis=1))
    assert model.loss_and_grads(X, y)[0] == pytest.approx(expected, rel=1e-12)


def test_ce_loss_value_is_negative_log_likelihood(batch):
    X, y = batch
    model = MLP((784, 10), "sigmoid", "ce", seed=0, dtype="float64")
    Z = X @ model.params["W0"] + model.params["b0"]
    P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(P[np.arange(len(y)), y]))
    assert model.loss_and_grads(X, y)[0] == pytest.approx(expected, rel=1e-12)


def test_activations_are_stable_at_extremes():
    """No overflow warning and exact limits for huge inputs; relu' is 0 at 0."""
    Z = np.array([[-1e4, -800.0, 0.0, 800.0, 1e4]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        A = sigmoid(np, Z)
        P = softmax(np, Z)
    np.testing.assert_array_equal(A, [[0, 0, 0.5, 1, 1]])
    assert np.all(np.isfinite(P)) and P.sum() == pytest.approx(1)
    np.testing.assert_array_equal(relu_grad(np, np.array([-1.0, 0.0, 2.0])), [0, 0, 1])


def test_ce_loss_finite_for_huge_logits():
    model = MLP((784, 10), "relu", "ce", seed=0, dtype="float32")
    model.params["W0"][...] = 0
    model.params["b0"][...] = np.array([1e4] + [0] * 9, dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, _ = model.loss_and_grads(np.zeros((2, 784)), np.array([0, 3]))
    assert loss == pytest.approx(0.5 * 1e4, rel=1e-6)


@pytest.mark.parametrize("loss", LOSSES)
def test_predict_proba_and_predict(loss, batch, device):
    X, _ = batch
    model = MLP((784, 16, 10), "relu", loss, seed=0, device=device)
    P = model.be.to_numpy(model.predict_proba(X))
    assert P.shape == (7, 10) and P.dtype == np.float32
    if loss == "ce":
        np.testing.assert_allclose(P.sum(axis=1), 1, rtol=1e-5)
    assert np.all((P >= 0) & (P <= 1))
    labels = model.be.to_numpy(model.predict(X))
    assert labels.shape == (7,)
    np.testing.assert_array_equal(labels, P.argmax(axis=1))


def test_params_layout_shapes_and_dtypes(device):
    model = MLP("784,16,16,10", device=device)
    assert list(model.params) == ["W0", "b0", "W1", "b1", "W2", "b2"]
    assert [tuple(model.params[k].shape) for k in model.params] == [(784, 16), (16,), (16, 16), (16,), (16, 10), (10,)]
    assert all(P.dtype == np.float32 for P in model.params.values())
    assert model.n_params == 784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    # params are views of the flat buffer the optimiser updates
    model.theta[0] = 123.0
    assert float(model.be.to_numpy(model.params["W0"])[0, 0]) == 123.0


def test_float32_stays_float32_through_forward_and_backward(batch):
    """Host float64 inputs are cast once; no silent promotion to float64 anywhere."""
    X, y = batch
    model = MLP(SMALL, "tanh", "ce")
    As, Z = model.forward(model.inputs(X))
    assert all(A.dtype == np.float32 for A in As) and Z.dtype == np.float32
    _, grads = model.loss_and_grads(X, y)
    assert all(G.dtype == np.float32 for G in grads.values())


@pytest.mark.parametrize(
    "init,std",
    [("lecun", np.sqrt(1 / 784)), ("he", np.sqrt(2 / 784)), ("xavier", np.sqrt(2 / (784 + 300))), ("normal", 1.0)],
)
def test_initialisation_scales(init, std):
    model = MLP((784, 300, 10), init=init, seed=0, dtype="float64")
    assert np.std(model.params["W0"]) == pytest.approx(std, rel=0.02)
    biases_zero = not np.any(model.params["b0"])
    assert biases_zero == (init != "normal")


def test_default_init_follows_activation():
    assert MLP(activation="sigmoid").init == "xavier"
    assert MLP(activation="tanh").init == "xavier"
    assert MLP(activation="relu").init == "he"


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = MLP(seed=5), MLP(seed=5), MLP(seed=6)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert not np.array_equal(a.theta, c.theta)


@pytest.mark.parametrize(
    "sizes,fragment",
    [
        ("785,10", "must start with 784"),
        ("784,16,9", "end with 10"),
        ("784,0,10", "positive"),
        ("784,-3,10", "positive"),
        ("784,a,10", "'a' is not a layer size; give whole numbers separated by commas or spaces"),
        ("784", "at least an input and an output"),
    ],
)
def test_bad_layer_sizes_are_refused_with_the_fix(sizes, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_sizes(sizes)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"activation": "gelu"}, "unknown activation 'gelu'"),
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"init": "orthogonal"}, "unknown init 'orthogonal'"),
        ({"dtype": "float16"}, "unknown dtype 'float16'"),
    ],
)
def test_unknown_options_name_the_choices(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        MLP(**kwargs)


def test_wrong_input_width_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"shape \(n, 784\)"):
        MLP().predict(np.zeros((3, 783)))


def _byte_offset(be, view, base) -> int:
    """Where ``view`` starts in ``base``, in bytes (both device arrays of one buffer)."""
    a, b = getattr(view, "_a", view), getattr(base, "_a", base)  # the fake device's arrays hold numpy's
    if hasattr(a, "data") and hasattr(a.data, "ptr"):  # CuPy
        return a.data.ptr - b.data.ptr
    return a.__array_interface__["data"][0] - b.__array_interface__["data"][0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes", [(784, 100, 50, 10), (784, 16, 16, 10), (784, 7, 3, 10)])
def test_every_parameter_view_starts_256_bytes_aligned(device, sizes, dtype):
    """cuBLAS takes slower paths for operands that are only 8-byte aligned (784-100-50-10 packed back
    to back put W2 at byte 334,200): each parameter and gradient view starts a multiple of 256 bytes
    into its flat buffer, and the gaps hold zeros that no update moves."""
    m = MLP(sizes, device=device, dtype=dtype)
    for views, base in ((m.params, m.theta), (m.grads, m.grad)):
        offsets = [_byte_offset(m.be, v, base) for v in views.values()]
        assert all(o % 256 == 0 for o in offsets), offsets
    host = m.be.to_numpy(m.theta)
    assert np.count_nonzero(host) == np.count_nonzero(flatten({k: m.be.to_numpy(v) for k, v in m.params.items()}))
    assert host.size - m.n_params < len(m.params) * 64  # at most ALIGN − 1 elements of padding each


def test_checkpoints_store_the_parameters_back_to_back(tmp_path):
    """The alignment is in memory only: a checkpoint's arrays and state vectors have the packed
    layout (n_params,), as before, and a shipped network loads and predicts as a plain numpy
    forward pass of its arrays does."""
    from gpumlp.formats import checkpoint
    from gpumlp.training.loop import fit
    from gpumlp.training.state import TrainState

    rng = np.random.default_rng(0)
    X, y = rng.random((40, 784)), rng.integers(0, 10, 40)
    m = MLP((784, 100, 50, 10), "relu", "ce")
    state = TrainState()
    fit(m, X, y, epochs=1, batch_size=10, lr=0.01, seed=0, state=state, optimizer="adam")
    checkpoint.save(tmp_path / "a.npz", m, state.arrays)
    with np.load(tmp_path / "a.npz") as f:
        assert f["state.optimizer.m"].shape == f["state.optimizer.v"].shape == (m.n_params,)
        np.testing.assert_array_equal(f["state.optimizer.m"], state.arrays["optimizer.m"])
        np.testing.assert_array_equal(f["W2"], m.params["W2"])
    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"
    net, _ = load(shipped)
    with np.load(shipped) as f:
        P = {k: f[k] for k in f.files if k != "metadata"}
    pixels = rng.random((5, 784)).astype(np.float32)
    Z = np.maximum(pixels @ P["W0"] + P["b0"], 0) @ P["W1"] + P["b1"]
    np.testing.assert_allclose(net.be.to_numpy(net.predict_proba(pixels)), softmax(np, Z), rtol=1e-5, atol=1e-6)
