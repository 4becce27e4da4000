"""Update rules against hand-computed steps, max-norm and the learning-rate schedules."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from gpumlp.backends.registry import get_backend
from gpumlp.errors import ConfigError
from gpumlp.model import MLP
from gpumlp.optim import FUSE_MIN_WEIGHTS, OPTIMIZERS, apply_max_norm, lr_at, make_optimizer
from gpumlp.training.loop import fit


def two_by_two(W, dW):
    """The smallest 'model' an optimiser needs: one 2×2 weight matrix and its gradient, float64."""
    theta, grad = np.array(W, dtype=np.float64).ravel(), np.array(dW, dtype=np.float64).ravel()
    return SimpleNamespace(be=get_backend("cpu"), theta=theta, grad=grad,
                           params={"W0": theta.reshape(2, 2)}, grads={"dW0": grad.reshape(2, 2)})  # fmt: skip


W0 = [[1.0, -2.0], [0.5, 4.0]]
G1 = [[0.1, -0.2], [0.3, 0.0]]
G2 = [[-0.4, 0.2], [0.1, 1.0]]


def steps(name, lr=0.5, **kw):
    """Two steps with gradients G1 then G2; returns theta after each as 2×2 arrays."""
    m = two_by_two(W0, G1)
    opt = make_optimizer(name, m, **kw)
    out = []
    for g in (G1, G2):
        m.grad[...] = np.ravel(g)
        opt.step(lr)
        out.append(m.theta.reshape(2, 2).copy())
    return out


def test_sgd_matches_a_hand_computed_step():
    w1, w2 = steps("sgd")
    np.testing.assert_array_equal(w1, [[0.95, -1.9], [0.35, 4.0]])  # W − 0.5·G1
    np.testing.assert_allclose(w2, [[1.15, -2.0], [0.3, 3.5]], rtol=0, atol=1e-15)  # − 0.5·G2


def test_momentum_matches_a_hand_computed_step():
    w1, w2 = steps("momentum", momentum=0.9)
    # v1 = G1, W1 = W0 − 0.5 v1;  v2 = 0.9 G1 + G2, W2 = W1 − 0.5 v2
    v2 = 0.9 * np.array(G1) + np.array(G2)
    np.testing.assert_allclose(w1, np.array(W0) - 0.5 * np.array(G1), rtol=0, atol=1e-15)
    np.testing.assert_allclose(w2, w1 - 0.5 * v2, rtol=0, atol=1e-15)
    assert w2[0, 0] == pytest.approx(0.95 - 0.5 * (0.09 - 0.4))  # 1.105, by hand


def test_nesterov_matches_a_hand_computed_step():
    w1, w2 = steps("nesterov", momentum=0.9)
    # v1 = G1: W1 = W0 − 0.5 (G1 + 0.9 G1);  v2 = 0.9 G1 + G2: W2 = W1 − 0.5 (G2 + 0.9 v2)
    g1, g2 = np.array(G1), np.array(G2)
    np.testing.assert_allclose(w1, np.array(W0) - 0.5 * 1.9 * g1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(w2, w1 - 0.5 * (g2 + 0.9 * (0.9 * g1 + g2)), rtol=0, atol=1e-15)
    assert w1[0, 0] == pytest.approx(1 - 0.5 * 0.19)  # 0.905, by hand


def test_adam_matches_a_hand_computed_step():
    w1, w2 = steps("adam", lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    # Step 1: m̂ = g, v̂ = g², so each weight moves by lr·sign(g) (where g ≠ 0).
    np.testing.assert_allclose(w1, np.array(W0) - 0.1 * np.sign(G1), rtol=0, atol=1e-7)
    g1, g2 = np.array(G1), np.array(G2)
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.999 * 0.001 * g1**2 + 0.001 * g2**2
    m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.999**2)
    np.testing.assert_allclose(w2, w1 - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_adds_lambda_w_to_the_gradient(name):
    """With weight decay λ, a step equals the step on the gradient g + λW."""
    lam = 0.01
    with_decay = two_by_two(W0, G1)
    make_optimizer(name, with_decay, weight_decay=lam).step(0.5)
    by_hand = two_by_two(W0, np.array(G1) + lam * np.array(W0))
    make_optimizer(name, by_hand).step(0.5)
    np.testing.assert_array_equal(with_decay.theta, by_hand.theta)


def test_weight_decay_leaves_biases_alone():
    m = MLP((784, 3, 10), "relu", "ce", seed=0, dtype="float64")
    b = {k: v.copy() for k, v in m.params.items() if k.startswith("b")}
    make_optimizer("sgd", m, weight_decay=0.5).step(1.0)  # zero gradient: only the decay acts
    for k, v in b.items():
        np.testing.assert_array_equal(m.params[k], v)
    W = MLP((784, 3, 10), "relu", "ce", seed=0, dtype="float64").params["W0"]
    np.testing.assert_allclose(m.params["W0"], 0.5 * W)  # W − 1.0·(0.5 W)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_lowers_the_loss(device, name):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 400)
    prototypes = rng.random((10, 784)) < 0.2  # one random pattern per class, under noise
    X = 0.5 * rng.random((400, 784)) + 0.5 * prototypes[y]
    m = MLP((784, 32, 10), "relu", "ce", seed=1, device=device)
    before, _ = m.loss_and_grads(X, y)  # ≈ ln 10
    lr = {"sgd": 0.05, "momentum": 0.005, "nesterov": 0.005, "adam": 0.001}[name]
    fit(m, X, y, epochs=3, batch_size=20, lr=lr, seed=0, optimizer=name)
    after, _ = m.loss_and_grads(X, y)
    assert after < 0.15 * before, (name, before, after)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ConfigError, match="unknown --optimizer 'rmsprop': choose one of sgd, momentum, nesterov, adam"):
        make_optimizer("rmsprop", two_by_two(W0, G1))


def test_resumed_optimizer_must_match():
    opt = make_optimizer("adam", two_by_two(W0, G1))
    with pytest.raises(ConfigError, match="trained with --optimizer momentum, not adam"):
        opt.load_state({"name": "momentum"}, {})
    with pytest.raises(
        ConfigError, match=r"lacks the adam optimiser's state \['m', 'v'\], so its run cannot continue exactly"
    ):
        opt.load_state({"name": "adam"}, {})


def test_max_norm_caps_each_units_incoming_weights(device):
    m = MLP((784, 20, 10), "relu", "ce", seed=0, init="normal", device=device)  # N(0,1): norms ≈ 28
    be = m.be
    small = be.to_numpy(m.params["W1"])[:, :3] * 1e-3  # three columns far below the cap
    m.params["W1"][:, :3] = be.asarray(small)
    apply_max_norm(m, 2.0)
    for key in ("W0", "W1"):
        norms = np.linalg.norm(be.to_numpy(m.params[key]), axis=0)
        assert np.all(norms <= 2.0 * (1 + 1e-6))
    np.testing.assert_allclose(np.linalg.norm(be.to_numpy(m.params["W0"]), axis=0), 2.0, rtol=1e-5)
    np.testing.assert_array_equal(be.to_numpy(m.params["W1"])[:, :3], small)  # under the cap: untouched


def test_schedules():
    kw = dict(lr=0.1, epochs=10, warmup=0, step_size=3, gamma=0.5)
    assert [lr_at(e, schedule="constant", **kw) for e in (1, 10)] == [0.1, 0.1]
    assert [lr_at(e, schedule="step", **kw) for e in range(1, 8)] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    cos = [lr_at(e, schedule="cosine", **kw) for e in range(1, 11)]
    assert cos[0] == 0.1 and cos[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.9))) and cos[-1] > 0
    assert all(a > b for a, b in zip(cos, cos[1:]))
    warm = dict(kw, warmup=3)
    assert [lr_at(e, schedule="cosine", **warm) for e in (1, 2, 3, 4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    with pytest.raises(ConfigError, match="unknown --schedule"):
        lr_at(1, schedule="linear", **kw)


# ---------------------------------------------------------------- SGD's step fused into backward


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("sizes", [(784, 96, 10), (784, 20, 30, 10)])
def test_fused_sgd_takes_the_same_steps_as_the_plain_update(sizes, weight_decay, monkeypatch):
    """backward's W ← (1 − ηλ)W − η·AᵀdZ (one BLAS product, no dW) against dW, then θ ← θ − η(g + λW),
    for every layer fused (threshold 0) and for the big first layer only (the default threshold)."""
    rng = np.random.default_rng(0)
    X, y = rng.random((300, 784)), rng.integers(0, 10, 300)
    for threshold in (0, FUSE_MIN_WEIGHTS):
        monkeypatch.setattr("gpumlp.optim.FUSE_MIN_WEIGHTS", threshold)
        thetas = []
        for fuse in (False, True):
            m = MLP(sizes, "relu", "ce", seed=3)
            opt = make_optimizer("sgd", m, weight_decay=weight_decay, fuse=fuse)
            expected = [l for l, W in enumerate(m._W) if fuse and W.size >= threshold]
            assert opt.fused == tuple(expected)
            for start in range(0, 300, 30):
                Xb, Yb = m.inputs(X[start : start + 30]), m.one_hot(y[start : start + 30])
                m.batch_loss_and_grads(Xb, Yb, None, opt.fused_update(0.1))
                opt.step(0.1)
            thetas.append(m.theta.copy())
        assert not np.array_equal(thetas[1], MLP(sizes, "relu", "ce", seed=3).theta)  # it trained
        np.testing.assert_allclose(thetas[1], thetas[0], rtol=1e-4, atol=1e-6)


def test_fused_spans_cover_everything_but_the_fused_matrices(monkeypatch):
    """The plain update after a fused backward touches each other parameter once and no fused W."""
    monkeypatch.setattr("gpumlp.optim.FUSE_MIN_WEIGHTS", 300)
    m = MLP((784, 20, 30, 10), "relu", "ce")  # W sizes 15680, 600, 300: all fused, every b not
    opt = make_optimizer("sgd", m, fuse=True)
    assert opt.fused == (0, 1, 2)
    for g in m.grads.values():  # (the alignment gaps between parameters never hold a gradient)
        g[...] = 1.0
    before = m.theta.copy()
    opt.step(1.0)
    moved = m.theta != before
    for l in range(3):
        assert not moved[_slice(m, m._W[l])].any()
        np.testing.assert_array_equal(m._b[l], before[_slice(m, m._b[l])] - 1)
    assert moved.sum() == sum(b.size for b in m._b)


def _slice(m, view) -> slice:
    """Where the parameter view ``view`` lies in the flat ``m.theta``."""
    start = (view.__array_interface__["data"][0] - m.theta.__array_interface__["data"][0]) // m.theta.itemsize
    return slice(start, start + view.size)


def test_only_sgd_fuses():
    m = MLP((784, 96, 10), "relu", "ce")
    for name in OPTIMIZERS:
        opt = make_optimizer(name, m, fuse=True)
        assert (opt.fused == (0,)) == (name == "sgd")
        assert opt.fused_update(0.1) == ({0: (-0.1, 1.0)} if name == "sgd" else {})


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
def test_blas_and_numpy_updates_take_the_same_steps(name, monkeypatch):
    """Long buffers are updated by one BLAS axpby per term, short ones by numpy's operators: the
    same rule either way (784-200-10: 159,010 parameters, above the BLAS threshold)."""
    rng = np.random.default_rng(0)
    X, y = rng.random((200, 784)), rng.integers(0, 10, 200)
    thetas = []
    for threshold in (1 << 30, 0):  # numpy everywhere, BLAS everywhere
        monkeypatch.setattr("gpumlp.backends.cpu.AXPBY_BLAS_MIN", threshold)
        m = MLP((784, 200, 10), "relu", "ce", seed=3)
        fit(m, X, y, epochs=2, batch_size=20, lr=0.05 if name != "adam" else 1e-3, seed=1, optimizer=name,
            weight_decay=1e-3)  # fmt: skip
        thetas.append(m.theta.copy())
    np.testing.assert_allclose(thetas[1], thetas[0], rtol=1e-4, atol=1e-6)
    assert not np.array_equal(thetas[0], MLP((784, 200, 10), "relu", "ce", seed=3).theta)


def test_hyper_parameters_are_checked_where_the_rule_declares_them():
    with pytest.raises(ConfigError, match=r"--momentum must be in \[0, 1\), e.g. 0.9 \(got 1.5\)"):
        make_optimizer("momentum", two_by_two(W0, G1), momentum=1.5)
    with pytest.raises(ConfigError, match="no update rule has the hyper-parameter"):
        make_optimizer("sgd", two_by_two(W0, G1), mu=0.5)
    opt = make_optimizer("adam", two_by_two(W0, G1), momentum=0.5, beta1=0.8)  # momentum: not Adam's
    assert opt.hyper == {"beta1": 0.8, "beta2": 0.999, "eps": 1e-8}
