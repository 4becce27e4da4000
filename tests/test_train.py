"""The training loop: the batches it takes, determinism, history, and real MNIST accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from gpumlp.errors import ConfigError
from gpumlp.model import MLP
from gpumlp.train import TrainConfig, evaluate, fit, run, shuffle_rng


def test_fit_is_minibatch_sgd_over_a_fresh_permutation_with_the_partial_batch(device):
    """Replaying the documented algorithm by hand (permutation from shuffle_rng, batches of 10,
    the last one of 5, W ← W − lr·∇mean-loss) gives the same parameters as ``fit``."""
    rng = np.random.default_rng(0)
    X, y = rng.random((25, 784)), rng.integers(0, 10, 25)
    model = MLP((784, 8, 10), "tanh", "ce", seed=3, device=device, dtype="float64")
    reference = MLP((784, 8, 10), "tanh", "ce", seed=3, dtype="float64")
    fit(model, X, y, epochs=2, batch_size=10, lr=0.5, seed=9)
    perms = shuffle_rng(9)
    for _ in range(2):
        perm = perms.permutation(25)
        for start in (0, 10, 20):
            idx = perm[start : start + 10]
            _, grads = reference.loss_and_grads(X[idx], y[idx])
            for k, P in reference.params.items():
                P -= 0.5 * grads["d" + k]
    np.testing.assert_allclose(model.be.to_numpy(model.theta), reference.theta, rtol=1e-12, atol=1e-12)


def test_same_seed_same_run_other_seed_other_run():
    rng = np.random.default_rng(1)
    X, y = rng.random((60, 784)), rng.integers(0, 10, 60)
    runs = []
    for seed in (4, 4, 5):
        m = MLP((784, 8, 10), seed=seed)
        fit(m, X, y, epochs=2, batch_size=7, lr=1.0, seed=seed)
        runs.append(m.theta.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_history_has_loss_and_validation_per_epoch():
    rng = np.random.default_rng(2)
    X, y = rng.random((40, 784)), rng.integers(0, 10, 40)
    seen = []
    m = MLP((784, 8, 10), "relu", "ce")
    h = fit(m, X, y, epochs=3, batch_size=8, lr=0.1, seed=0, X_val=X[:10], y_val=y[:10], on_epoch=seen.append)
    assert [e.epoch for e in h] == [1, 2, 3] and seen == h
    assert all(e.train_loss > 0 and 0 <= e.val_accuracy <= 1 and e.seconds > 0 for e in h)
    assert h[-1].train_loss < h[0].train_loss  # it learns the training set
    assert h[-1].val_accuracy == evaluate(m, X[:10], y[:10])
    assert fit(m, X, y, epochs=1, batch_size=8, lr=0.1, seed=0)[0].val_accuracy is None


def test_evaluate_counts_correct_answers():
    m = MLP((784, 10), "sigmoid", "ce")
    X = np.random.default_rng(0).random((30, 784))
    pred = m.be.to_numpy(m.predict(X))
    y = pred.copy()
    y[:6] = (y[:6] + 1) % 10
    assert evaluate(m, X, y) == pytest.approx(24 / 30)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"batch_size": 101, "train_size": 100}, "larger than --train-size"),
        ({"lr": 0.0}, "--lr must be a positive"),
        ({"lr": float("nan")}, "--lr must be a positive"),
        ({"lr": float("inf")}, "--lr must be a positive"),
        ({"val_size": -1}, "--val-size must be 0 or more"),
        ({"sizes": "784,10,9"}, "end with 10"),
        ({"dtype": "int8"}, "unknown dtype"),
    ],
)
def test_config_refuses_values_that_cannot_work(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig(**kwargs)


def test_train_plus_val_above_the_training_file_is_refused(mnist_dir, tmp_path):
    with pytest.raises(ConfigError, match="exceeds the 60000"):
        run(TrainConfig(train_size=55_000, val_size=10_000), data_dir=mnist_dir, save=tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_one_epoch_of_the_reference_network_reaches_90_percent(mnist, mnist_dir, tmp_path):
    """The Rust project's reference network (784-16-16-10, sigmoid, mse, batch 10, lr 3.0),
    one epoch on 50000 real MNIST images: at least 90% on the 10000 test images."""
    cfg = TrainConfig(epochs=1)
    result = run(cfg, data_dir=mnist_dir, save=tmp_path / "ref.npz", log=lambda s: None)
    assert result.test_accuracy >= 0.90
    assert result.history[0].val_accuracy >= 0.90
    X_test, y_test = mnist[2], mnist[3]
    assert evaluate(result.model, X_test, y_test) == result.test_accuracy
