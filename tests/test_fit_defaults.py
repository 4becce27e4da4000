"""``gpumlp.fit`` as Keras users know it: a recipe that suits the model when none is given, and a
progress bar or a line per epoch (``verbose``) over fit's own callbacks."""

from __future__ import annotations

import io

import numpy as np
import pytest

import gpumlp
from gpumlp.errors import ConfigError
from gpumlp.training.presets import PRESETS, fit_recipe
from gpumlp.training.progress import ProgressBar, verbosity
from gpumlp.training.state import EpochStats


@pytest.fixture(scope="module")
def small(mnist):
    X, y = mnist[0], mnist[1]
    return X[:1000], y[:1000], X[50000:50300], y[50000:50300]


def trained(sizes, activation, loss, X, y, **kwargs):
    model = gpumlp.MLP(sizes, activation, loss, seed=0)
    history = gpumlp.fit(model, X, y, verbose=0, **kwargs)
    return model.be.to_numpy(model.theta), history


def test_the_recipe_follows_the_models_activation_and_loss():
    fast, seed = fit_recipe("relu", "ce"), fit_recipe("sigmoid", "mse")
    assert fast == ("fast", {k: v for k, v in PRESETS["fast"].items() if k not in ("sizes", "activation", "loss")})
    assert seed == ("seed", {"batch_size": 10, "lr": 3.0, "epochs": 30})
    assert fit_recipe("tanh", "ce")[0] == "fast"
    assert fit_recipe("tanh", "mse") == ("seed", {**seed[1], "lr": 1.0})  # lr 3.0 suits sigmoid units only
    assert fit_recipe("relu", "a-loss-registered-later")[0] == "seed"


@pytest.mark.parametrize("activation, loss", [("relu", "ce"), ("sigmoid", "mse")])
def test_fit_without_a_recipe_trains_with_the_models_one(small, activation, loss):
    X, y, _, _ = small
    theta, history = trained((784, 16, 10), activation, loss, X, y)
    recipe = fit_recipe(activation, loss)[1]
    explicit, _ = trained((784, 16, 10), activation, loss, X, y, seed=0, **recipe)
    assert len(history) == recipe["epochs"] and history[0].batch_size == recipe["batch_size"]
    np.testing.assert_array_equal(theta, explicit)


def test_what_the_caller_gives_wins(small):
    X, y, _, _ = small
    # epochs alone: the rest of the model's recipe (nesterov, cosine, batch 128, lr 0.15)
    theta, history = trained((784, 16, 10), "relu", "ce", X, y, epochs=1)
    explicit, _ = trained((784, 16, 10), "relu", "ce", X, y, **{**fit_recipe("relu", "ce")[1], "epochs": 1})
    np.testing.assert_array_equal(theta, explicit)
    assert len(history) == 1
    # an lr: plain SGD at a constant rate, as fit always trained with an lr; the batch from the recipe
    theta, history = trained((784, 16, 10), "relu", "ce", X, y, lr=0.5, epochs=1)
    explicit, _ = trained((784, 16, 10), "relu", "ce", X, y, lr=0.5, epochs=1, batch_size=128, optimizer="sgd")
    np.testing.assert_array_equal(theta, explicit)
    assert history[0].lr == 0.5 and history[0].batch_size == 128
    # everything given, as every caller did before: exactly that
    _, history = trained((784, 16, 10), "relu", "ce", X, y, epochs=2, batch_size=50, lr=0.1, seed=0)
    assert [(h.batch_size, h.lr) for h in history] == [(50, 0.1), (50, 0.1)]


def test_the_default_recipe_reaches_a_useful_accuracy(mnist):
    X, y = mnist[0], mnist[1]
    model = gpumlp.MLP((784, 64, 10), "relu", "ce", seed=0)
    gpumlp.fit(model, X[:20000], y[:20000], verbose=0)  # fast's recipe: 3 epochs
    assert gpumlp.evaluate(model, X[50000:52000], y[50000:52000]) > 0.94


def test_verbose_2_prints_a_line_per_epoch_and_keeps_the_callers_callbacks(small, capsys):
    X, y, Xv, yv = small
    seen = []
    model = gpumlp.MLP((784, 16, 10), "relu", "ce", seed=0)
    gpumlp.fit(model, X, y, X_val=Xv, y_val=yv, epochs=2, verbose=2, on_epoch=seen.append)
    err = capsys.readouterr().err.splitlines()
    assert [s.epoch for s in seen] == [1, 2]
    assert [line.split("  ")[0] for line in err] == ["epoch 1/2", "epoch 2/2"]
    assert f"val acc {100 * seen[1].val_accuracy:6.2f}%" in err[1] and "\r" not in "".join(err)


@pytest.mark.parametrize("verbose", [0, "auto"])
def test_quiet_without_a_terminal(small, capsys, verbose):
    X, y, _, _ = small
    model = gpumlp.MLP((784, 16, 10), "relu", "ce", seed=0)
    gpumlp.fit(model, X, y, epochs=1, verbose=verbose)  # stderr here is pytest's capture, no terminal
    assert capsys.readouterr() == ("", "")


def test_auto_is_a_bar_on_a_terminal(small, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    X, y, _, _ = small
    monkeypatch.setattr("sys.stderr", Terminal())
    model = gpumlp.MLP((784, 16, 10), "relu", "ce", seed=0)
    progress = []
    gpumlp.fit(model, X, y, epochs=1, on_progress=lambda *a: progress.append(a))
    out = __import__("sys").stderr.getvalue()
    assert out.count("\r") >= 2 and "[" in out and out.endswith("\n") and progress  # the caller's too
    assert out.rsplit("\r", 1)[1].startswith("epoch 1/1  loss ")


def test_the_bar_estimates_the_time_left_from_its_own_clock():
    now = [100.0]
    out = io.StringIO()
    bar = ProgressBar(3, live=True, stream=out, clock=lambda: now[0])
    bar.progress(1, 10, 100, 0.5)
    now[0] += 2.0  # 20 more batches in 2 s: 70 left take 7 s
    bar.progress(1, 30, 100, 0.25)
    assert out.getvalue().rsplit("\r", 1)[1] == "epoch 1/3 [======>.............] 30/100  ETA 7s  loss 0.2500"
    bar.epoch(EpochStats(1, 0.2, 0.9, 3.0, 0.1, 10, 0.3))
    assert out.getvalue().endswith("\repoch 1/3  loss 0.2000  val loss 0.3000  val acc  90.00%  3.00s".ljust(57) + "\n")
    bar.progress(2, 5, 100, 0.1)
    bar.close()  # Ctrl-C mid-epoch: the line is ended
    assert out.getvalue().endswith("loss 0.1000\n")


def test_a_note_gets_its_own_line_under_a_live_bar():
    out, notes = io.StringIO(), []
    bar = ProgressBar(3, live=True, stream=out, clock=lambda: 0.0)
    bar.progress(1, 10, 100, 0.5)
    drawn = len(out.getvalue()) - 1
    bar.notes(notes.append)("epoch 1 will take about 2 min")
    assert notes == ["epoch 1 will take about 2 min"] and out.getvalue().endswith("\r" + " " * drawn + "\r")
    bar.progress(1, 20, 100, 0.4)  # drawn again, on the line after the note
    assert out.getvalue().endswith("\r\repoch 1/3 [====>...............] 20/100  ETA 0s  loss 0.4000")


def test_a_bad_verbose_is_refused():
    for bad in (3, "yes", -1):
        with pytest.raises(ConfigError, match="verbose must be 0"):
            verbosity(bad, io.StringIO())
    assert verbosity(True, io.StringIO()) == 1 and verbosity("auto", io.StringIO()) == 0
