"""The whole pipeline on the strict fake device: what would crash only on a real GPU fails here.

The fake (tests/fake_device.py) is numpy underneath, so its results must equal numpy's exactly;
what it adds is refusal of implicit host/device conversions and a count of every transfer.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpumlp.formats import checkpoint
from gpumlp.model import MLP
from gpumlp.training.config import TrainConfig
from gpumlp.training.loop import fit
from gpumlp.training.run import run
from standins.fake_device import FAKE, DeviceMixError, counters

SMALL = dict(sizes=(784, 24, 10), train_size=2000, val_size=300, test_size=300, batch_size=20, lr=0.5, seed=3)


@pytest.fixture(autouse=True)
def fake():
    counters.reset()


def quiet(*_):
    pass


def test_the_fake_refuses_what_a_gpu_would(tmp_path):
    """Meta-test: each classic host/device mistake raises on the fake device."""
    a = FAKE.asarray(np.arange(6.0).reshape(2, 3))
    host = np.ones((2, 3))
    mistakes = [
        lambda: np.argmax(a),  # a numpy function on a device array
        lambda: np.savez(tmp_path / "x.npz", W=a),  # saving without a host copy
        lambda: a + host,  # mixing with a host array
        lambda: host == a,  # host labels compared with device predictions
        lambda: float(a[0, 0]),  # an implicit sync
        lambda: a.item(),
        lambda: bool(a[0, 0] > 1),
        lambda: a[host.astype(int)],  # indexing with a host array
    ]
    for mistake in mistakes:
        with pytest.raises((DeviceMixError, TypeError)):
            mistake()
    np.testing.assert_array_equal(FAKE.to_numpy(a * 2 + 1), np.arange(6.0).reshape(2, 3) * 2 + 1)  # the right way


@pytest.mark.parametrize("activation,loss", [("sigmoid", "mse"), ("relu", "ce"), ("tanh", "ce")])
def test_training_on_the_fake_equals_numpy_bit_for_bit(activation, loss):
    """Same seed, same batches: float64 parameters after 300 SGD steps are identical on both."""
    rng = np.random.default_rng(0)
    X, y = rng.random((600, 784)), rng.integers(0, 10, 600)
    models = {}
    for device in ("cpu", "fake"):
        m = MLP((784, 16, 12, 10), activation, loss, seed=1, device=device, dtype="float64")
        fit(m, X, y, epochs=5, batch_size=10, lr=0.3, seed=2, X_val=X[:50], y_val=y[:50])
        models[device] = m
    fake_theta = models["fake"].be.to_numpy(models["fake"].theta)
    np.testing.assert_allclose(fake_theta, models["cpu"].theta, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(fake_theta, models["cpu"].theta)  # numpy underneath: in fact exact


def test_float32_everywhere_on_the_fake():
    m = MLP((784, 16, 10), "sigmoid", "mse", device="fake")
    rng = np.random.default_rng(0)
    fit(m, rng.random((100, 784)), rng.integers(0, 10, 100), epochs=1, batch_size=10, lr=1.0, seed=0)
    assert m.theta.dtype == np.float32 and m.grad.dtype == np.float32
    As, Z = m.forward(m.inputs(rng.random((5, 784))))
    assert all(A.dtype == np.float32 for A in As) and Z.dtype == np.float32


def test_transfers_per_epoch_do_not_grow_with_the_number_of_batches():
    """Each epoch: one permutation in; the loss and the validation count out; one synchronisation."""
    rng = np.random.default_rng(0)
    X, y = rng.random((400, 784)), rng.integers(0, 10, 400)
    per_epoch = {}
    for batch_size in (100, 10, 1):  # 4, 40 and 400 batches per epoch
        m = MLP((784, 8, 10), device="fake")
        counters.reset()
        fit(m, X, y, epochs=1, batch_size=batch_size, lr=0.1, seed=0, X_val=X[:40], y_val=y[:40])
        one = (counters.to_device, counters.to_host, counters.syncs)
        counters.reset()
        fit(m, X, y, epochs=3, batch_size=batch_size, lr=0.1, seed=0, X_val=X[:40], y_val=y[:40])
        three = (counters.to_device, counters.to_host, counters.syncs)
        per_epoch[batch_size] = tuple((t - o) // 2 for t, o in zip(three, one))
    assert per_epoch[100] == per_epoch[10] == per_epoch[1] == (1, 2, 1)


def test_full_run_save_load_and_resume_on_the_fake(tmp_path, mnist_dir):
    """Training with validation, the test, saving in both formats, loading on either device, and
    an exact resume, all on the fake device, equal to the same run on numpy."""
    cpu = run(TrainConfig(epochs=2, **SMALL), mnist_dir, tmp_path / "cpu.npz", log=quiet)
    for suffix in (".npz", ".json"):
        fake = run(TrainConfig(epochs=2, device="fake", **SMALL), mnist_dir, tmp_path / f"f{suffix}", log=quiet)
        assert fake.model.be is FAKE
        assert [e.train_loss for e in fake.history] == [e.train_loss for e in cpu.history]
        assert fake.test_accuracy == cpu.test_accuracy
        on_cpu, meta = checkpoint.load(tmp_path / f"f{suffix}", device="cpu")
        np.testing.assert_array_equal(on_cpu.theta, cpu.model.theta)
        assert meta["device"] == "fake"
        on_fake, _ = checkpoint.load(tmp_path / "cpu.npz", device="fake")
        np.testing.assert_array_equal(FAKE.to_numpy(on_fake.theta), cpu.model.theta)
    full = run(TrainConfig(epochs=4, device="fake", **SMALL), mnist_dir, tmp_path / "full.npz", log=quiet)
    resumed = run(TrainConfig(epochs=4, device="fake", **SMALL), mnist_dir, log=quiet, resume=tmp_path / "f.npz")
    np.testing.assert_array_equal(FAKE.to_numpy(resumed.model.theta), FAKE.to_numpy(full.model.theta))


RECIPE = dict(optimizer="adam", weight_decay=1e-4, dropout=0.3, max_norm=3.0, schedule="cosine", warmup=1,
              patience=2, augment="affine,elastic")  # fmt: skip


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_every_recipe_option_on_the_fake_equals_numpy_bit_for_bit(optimizer, monkeypatch):
    """Optimiser state, weight decay, dropout masks, max-norm, schedule, early stopping and
    augmentation: all on the device, and identical to numpy's. SGD steps every weight matrix
    inside backward here (the fused product, with weight decay in its β)."""
    monkeypatch.setattr("gpumlp.optim.FUSE_MIN_WEIGHTS", 0)
    rng = np.random.default_rng(0)
    X, y = rng.random((400, 784)), rng.integers(0, 10, 400)
    thetas = {}
    for device in ("cpu", "fake"):
        m = MLP((784, 16, 12, 10), "relu", "ce", seed=1, device=device, dtype="float64")
        fit(m, X, y, epochs=3, batch_size=20, lr=0.01, seed=2, X_val=X[:50], y_val=y[:50],
            **dict(RECIPE, optimizer=optimizer))  # fmt: skip
        thetas[device] = m.be.to_numpy(m.theta)
    np.testing.assert_array_equal(thetas["fake"], thetas["cpu"])


def test_the_recipe_adds_no_transfer_to_the_batch_loop():
    """With every option on, each epoch still moves one permutation in, two reads out, one sync."""
    rng = np.random.default_rng(0)
    X, y = rng.random((400, 784)), rng.integers(0, 10, 400)
    per_epoch = {}
    for batch_size in (100, 10):  # 4 and 40 batches per epoch
        counts = []
        for epochs in (1, 3):
            m = MLP((784, 8, 10), "relu", "ce", device="fake")
            counters.reset()
            fit(m, X, y, epochs=epochs, batch_size=batch_size, lr=0.01, seed=0, X_val=X[:40], y_val=y[:40],
                **dict(RECIPE, patience=5))  # fmt: skip
            counts.append((counters.to_device, counters.to_host, counters.syncs))
        per_epoch[batch_size] = tuple((t - o) // 2 for o, t in zip(*counts))
    assert per_epoch[100] == per_epoch[10] == (1, 2, 1)


def test_labels_already_on_the_device_are_checked_with_one_transfer():
    """CuPy's take() wraps an out-of-range label into another class: the check reads min and max back."""
    from gpumlp.errors import ConfigError
    from gpumlp.training.evaluation import evaluate

    m = MLP((784, 8, 10), device="fake")
    X = np.random.default_rng(0).random((5, 784))
    bad = m.be.asarray(np.array([0, 1, 2, 3, 10]))
    with pytest.raises(ConfigError, match="y holds label 10"):
        m.loss_and_grads(X, bad)
    counters.reset()
    evaluate(m, X, m.be.asarray(np.array([0, 1, 2, 3, 9])))
    assert counters.to_host == 2  # the labels' min and max, then the count of correct answers
