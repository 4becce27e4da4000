"""The training recipe: dropout, early stopping, exact resume with every option, presets, the
checkpoint's training state, and the fast preset on real MNIST."""

from __future__ import annotations

import numpy as np
import pytest

import gpumlp.data.load
import gpumlp.training.loop
import gpumlp.training.state
from gpumlp.backends.rng import DeviceRNG
from gpumlp.errors import ConfigError
from gpumlp.formats import checkpoint
from gpumlp.model import MLP, pack
from gpumlp.training.config import TrainConfig, preset_config, resume_config
from gpumlp.training.loop import fit
from gpumlp.training.presets import PRESETS
from gpumlp.training.run import run

SMALL = dict(sizes=(784, 24, 10), activation="relu", loss="ce", train_size=2000, val_size=500, test_size=500,
             batch_size=32, lr=0.05, seed=3)  # fmt: skip


def quiet(*_):
    pass


# ---------------------------------------------------------------- dropout


def test_dropout_masks_keep_the_expectation(device):
    m = MLP((784, 300, 200, 10), "relu", "ce", device=device)
    rng = DeviceRNG(m.be, 0, "dropout")
    masks = [m.be.to_numpy(M) for M in m.dropout_masks(rng, 0.3, 1000, 1, 2)]
    assert [M.shape for M in masks] == [(1000, 300), (1000, 200)]
    for M in masks:
        assert set(np.unique(M)) == {0.0, np.float32(1 / 0.7)}
        assert abs((M == 0).mean() - 0.3) < 0.01  # 300000 and 200000 draws: 0.3 ± 0.002 (σ)
        assert abs(M.mean() - 1.0) < 0.015  # E[M] = 1: a unit's expected output is unchanged
    again = [m.be.to_numpy(M) for M in m.dropout_masks(rng, 0.3, 1000, 1, 2)]
    other = [m.be.to_numpy(M) for M in m.dropout_masks(rng, 0.3, 1000, 1, 3)]
    np.testing.assert_array_equal(masks[0], again[0])  # a pure function of (seed, epoch, batch, layer)
    assert (masks[0] != other[0]).mean() > 0.3
    assert (masks[0][:, :200] != masks[1]).mean() > 0.3  # each layer draws its own mask


def test_dropout_gradients_match_finite_differences():
    """With the masks held fixed, backward is the gradient of the dropped-out network's loss."""
    m = MLP((784, 6, 5, 10), "tanh", "ce", seed=1, dtype="float64")
    rng = np.random.default_rng(0)
    X, y = m.inputs(rng.random((4, 784))), rng.integers(0, 10, 4)
    Y = m.one_hot(y)
    masks = m.dropout_masks(DeviceRNG(m.be, 5, "dropout"), 0.5, 4, 1, 1)
    m.batch_loss_and_grads(X, Y, masks)
    analytic = m.grad.copy()
    eps, numeric = 1e-6, np.zeros(m.n_params)
    for i in rng.choice(m.n_params, 80, replace=False).tolist() + list(range(m.n_params - 60, m.n_params)):
        old = m.theta[i]
        m.theta[i] = old + eps
        up = m.batch_loss_and_grads(X, Y, masks).sum()
        m.theta[i] = old - eps
        down = m.batch_loss_and_grads(X, Y, masks).sum()
        m.theta[i] = old
        numeric[i] = (up - down) / (2 * eps) / 4  # of the mean loss
        np.testing.assert_allclose(analytic[i], numeric[i], rtol=1e-5, atol=1e-9)


def test_dropout_is_off_at_evaluation(mnist_dir):
    r = run(TrainConfig(epochs=1, dropout=0.5, **SMALL), mnist_dir, save=False, log=quiet)
    m = r.model
    X = np.random.default_rng(0).random((50, 784))
    p1, p2 = m.be.to_numpy(m.predict_proba(X)), m.be.to_numpy(m.predict_proba(X))
    np.testing.assert_array_equal(p1, p2)  # deterministic: no masks outside training
    As, Z = m.forward(m.inputs(X))
    W, b = m.params["W0"], m.params["b0"]
    # no scaling either (the tolerance is float32 rounding: MKL, when installed, sums in another order)
    np.testing.assert_allclose(As[1], np.maximum(m.inputs(X) @ W + b, 0), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- early stopping


def test_early_stopping_restores_the_best_epoch(monkeypatch):
    """A scripted validation history: best at epoch 2, two epochs without improvement → stop."""
    scores = iter([0.50, 0.70, 0.60, 0.65, 0.90, 0.95])
    monkeypatch.setattr(gpumlp.training.loop, "evaluate_loss", lambda model, X, y, **_: (1.0, next(scores)))
    rng = np.random.default_rng(0)
    X, y = rng.random((100, 784)), rng.integers(0, 10, 100)
    m = MLP((784, 8, 10), "relu", "ce", seed=0)
    seen = {}
    state = gpumlp.training.state.TrainState()
    history = fit(m, X, y, epochs=6, batch_size=10, lr=0.1, seed=0, X_val=X[:10], y_val=y[:10], state=state,
                  on_epoch=lambda e: seen.__setitem__(e.epoch, m.theta.copy()), patience=2)  # fmt: skip
    assert [e.epoch for e in history] == [1, 2, 3, 4]  # stopped: 3 and 4 were no better than 2
    assert (state.best_epoch, state.best_score, state.stopped_epoch, state.weights_epoch) == (2, 0.70, 4, 2)
    np.testing.assert_array_equal(m.theta, seen[2])
    # kept for the record and resume, packed as a checkpoint stores it (no alignment gaps)
    np.testing.assert_array_equal(state.arrays["last_theta"], pack(seen[4], m.sizes))


def test_early_stopping_on_loss_and_the_checkpoint_records_the_epoch(tmp_path, mnist_dir, monkeypatch):
    losses = iter([(0.9, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.8)])  # loss best at epoch 2, accuracy rising
    monkeypatch.setattr(gpumlp.training.loop, "evaluate_loss", lambda model, X, y, **_: next(losses))
    cfg = TrainConfig(epochs=10, patience=2, monitor="loss", **SMALL)
    lines = []
    r = run(cfg, mnist_dir, tmp_path / "es.npz", log=lines.append)
    assert len(r.history) == 4
    meta = checkpoint.read_metadata(tmp_path / "es.npz")
    assert meta["train_state"]["weights_epoch"] == 2 and meta["train_state"]["stopped_epoch"] == 4
    assert any("kept the weights of epoch 2" in line for line in lines)
    with pytest.raises(ConfigError, match="stopped early after epoch 4"):
        run(TrainConfig(**{**cfg.to_dict(), "epochs": 12}), mnist_dir, log=quiet, resume=tmp_path / "es.npz")


# ---------------------------------------------------------------- exact resume with every option

RECIPES = {
    "sgd": {},
    "momentum+step": dict(optimizer="momentum", schedule="step", step_size=1, gamma=0.5, weight_decay=1e-4),
    "nesterov+cosine+warmup": dict(optimizer="nesterov", schedule="cosine", warmup=1, max_norm=2.0),
    "adam+dropout": dict(optimizer="adam", lr=0.002, dropout=0.3, weight_decay=1e-4),
    "augment+patience": dict(optimizer="momentum", augment="affine,elastic", patience=3, dropout=0.2),
}


CASES = [(name, ".npz") for name in RECIPES] + [("adam+dropout", ".json"), ("augment+patience", ".json")]


@pytest.mark.parametrize(("name", "suffix"), CASES)
def test_two_plus_two_epochs_equal_four_with_every_option(tmp_path, mnist_dir, name, suffix):
    opts = {**SMALL, **RECIPES[name]}
    full = run(TrainConfig(epochs=4, **opts), mnist_dir, tmp_path / f"full{suffix}", log=quiet)
    run(TrainConfig(epochs=2, **opts), mnist_dir, tmp_path / f"half{suffix}", log=quiet)
    saved = checkpoint.read_metadata(tmp_path / f"half{suffix}")
    resumed = run(
        resume_config(saved["config"], {"epochs": 4}), mnist_dir, log=quiet, resume=tmp_path / f"half{suffix}"
    )
    a, _ = checkpoint.load(tmp_path / f"half{suffix}")
    b, _ = checkpoint.load(tmp_path / f"full{suffix}")
    np.testing.assert_array_equal(a.theta, b.theta)
    assert [(e.train_loss, e.lr) for e in resumed.history] == [(e.train_loss, e.lr) for e in full.history]
    assert resumed.test_accuracy == full.test_accuracy


def test_the_checkpoint_holds_the_optimizer_state_exactly(tmp_path, mnist_dir):
    """Adam's moments go to the file bit for bit (npz arrays, JSON lists) and come back on load."""
    model = MLP((784, 24, 10), "relu", "ce", seed=3)
    state = gpumlp.training.state.TrainState()
    X, y, _, _ = gpumlp.data.load.load_mnist(mnist_dir)
    fit(model, X[:2000], y[:2000], epochs=1, batch_size=32, lr=0.001, seed=3, state=state, optimizer="adam")
    m, v = state.arrays["optimizer.m"].copy(), state.arrays["optimizer.v"].copy()
    assert np.abs(m).max() > 0 and v.min() >= 0 and v.max() > 0
    checkpoint.save(tmp_path / "a.npz", model, state.arrays, optimizer=state.optimizer)
    checkpoint.convert(tmp_path / "a.npz", tmp_path / "a.json")
    for path in (tmp_path / "a.npz", tmp_path / "a.json"):
        _, meta = checkpoint.load(path)
        assert meta["optimizer"] == {"name": "adam", "weight_decay": 0.0, "t": 63,  # ⌈2000 / 32⌉ steps
                                     "hyper": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}}  # fmt: skip
        np.testing.assert_array_equal(meta["state_arrays"]["optimizer.m"], m)
        np.testing.assert_array_equal(meta["state_arrays"]["optimizer.v"], v)
    assert checkpoint.describe(tmp_path / "a.json")["state_arrays"] == {
        "optimizer.m": [model.n_params], "optimizer.v": [model.n_params]}  # fmt: skip


def test_damaged_state_arrays_are_refused(tmp_path, mnist_dir):
    run(TrainConfig(epochs=1, optimizer="momentum", **SMALL), mnist_dir, tmp_path / "m.npz", log=quiet)
    with np.load(tmp_path / "m.npz") as z:
        arrays = dict(z)
    arrays["state.optimizer.velocity"] = arrays["state.optimizer.velocity"][:-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(checkpoint.CheckpointError, match="state optimizer.velocity has shape"):
        checkpoint.load(tmp_path / "bad.npz")


# ---------------------------------------------------------------- presets


def test_presets_parse_and_explicit_options_override():
    for name in PRESETS:
        cfg = preset_config(name)
        assert cfg.preset == name
    seed = preset_config("seed")
    assert (seed.sizes, seed.activation, seed.loss, seed.batch_size, seed.lr, seed.train_size, seed.epochs) == (
        (784, 16, 16, 10), "sigmoid", "mse", 10, 3.0, 10_000, 30)  # fmt: skip
    best = preset_config("best", epochs=3, lr=0.01)
    assert (best.epochs, best.lr) == (3, 0.01) and best.augment == PRESETS["best"]["augment"]
    with pytest.raises(ConfigError, match="unknown --preset 'quick'"):
        preset_config("quick")


def test_preset_through_the_cli_keeps_explicit_options(tmp_path, mnist_dir):
    from typer.testing import CliRunner

    from gpumlp.cli.commands import app

    out = tmp_path / "p.npz"
    args = ["train", "--preset", "fast", "--epochs", "1", "--train-size", "3000", "--val-size", "500",
            "--test-size", "0", "--lr", "0.02", "--data-dir", str(mnist_dir), "--save", str(out), "-q"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    cfg = checkpoint.read_metadata(out)["config"]
    assert (cfg["preset"], cfg["epochs"], cfg["lr"], cfg["train_size"]) == ("fast", 1, 0.02, 3000)
    fast = PRESETS["fast"]
    assert (cfg["sizes"], cfg["optimizer"], cfg["batch_size"]) == (
        list(fast["sizes"]),
        fast["optimizer"],
        fast["batch_size"],
    )
    assert f"{fast['optimizer']} lr 0.02 (cosine)" in res.output  # the log line names the recipe in use


def test_fast_preset_reaches_98_percent_on_real_mnist(mnist_dir):
    """A correctness test, not a timing test: the preset as shipped, seed 0, full test set."""
    r = run(preset_config("fast", seed=0), mnist_dir, save=False, log=quiet)
    assert r.test_accuracy >= 0.98, r.test_accuracy
