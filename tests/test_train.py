"""The training loop: the batches it takes, determinism, history, and real MNIST accuracy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gpumlp.errors import ConfigError
from gpumlp.model import MLP
from gpumlp.training.config import TrainConfig
from gpumlp.training.evaluation import evaluate
from gpumlp.training.loop import fit, shuffle_rng
from gpumlp.training.run import run


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


@pytest.mark.parametrize("gather", [1, 7, 256, 8192])
def test_the_batches_do_not_depend_on_how_many_images_are_gathered_at_once(gather, monkeypatch):
    """``_train_epoch`` gathers ``be.gather_images`` shuffled images at a time (whole batches, the
    chunk rounded down to a multiple of the batch, at least one): any size trains the same batches."""
    rng = np.random.default_rng(2)
    X, y = rng.random((95, 784)), rng.integers(0, 10, 95)
    thetas = []
    for size in (gather, 10**6):
        monkeypatch.setattr("gpumlp.backends.cpu.NumpyBackend.gather_images", size)
        m = MLP((784, 8, 10), "relu", "ce", seed=1)
        fit(m, X, y, epochs=2, batch_size=10, lr=0.3, seed=4, optimizer="nesterov")
        thetas.append(m.theta.copy())
    np.testing.assert_array_equal(thetas[0], thetas[1])


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
        ({"lr": float("nan")}, "--lr must be a finite number"),
        ({"lr": float("inf")}, "--lr must be a finite number"),
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


# ---------------------------------------------------------------- the files of a run (issues 15 and 16)

RUN = dict(sizes=(784, 24, 10), train_size=1000, val_size=200, test_size=200, batch_size=20, lr=0.5, epochs=2)


def test_default_checkpoint_names_never_replace_an_earlier_run(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = run(TrainConfig(**RUN), mnist_dir, log=lambda *_: None)
    before = first.checkpoint.read_bytes()
    second = run(TrainConfig(**{**RUN, "seed": 1}), mnist_dir, log=lambda *_: None)
    assert first.checkpoint.as_posix() == "checkpoints/784-24-10-sigmoid-mse.npz"
    assert second.checkpoint.as_posix() == "checkpoints/784-24-10-sigmoid-mse-2.npz"
    assert first.checkpoint.read_bytes() == before  # untouched
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "784-24-10-sigmoid-mse-2.npz", "784-24-10-sigmoid-mse-2.npz.metrics.jsonl",
        "784-24-10-sigmoid-mse.npz", "784-24-10-sigmoid-mse.npz.metrics.jsonl",
    ]  # fmt: skip


def test_a_named_save_path_is_replaced(tmp_path, mnist_dir):
    from gpumlp.formats import checkpoint

    run(TrainConfig(**RUN), mnist_dir, tmp_path / "m.npz", log=lambda *_: None)
    run(TrainConfig(**{**RUN, "seed": 1}), mnist_dir, tmp_path / "m.npz", log=lambda *_: None)
    assert checkpoint.read_metadata(tmp_path / "m.npz")["config"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "m.npz.metrics.jsonl"]


def test_a_run_saving_where_another_run_saves_is_refused_up_front(tmp_path, mnist_dir, monkeypatch):
    from gpumlp.errors import CheckpointError
    from gpumlp.formats.atomic import RunLock

    other = RunLock(tmp_path / "m.npz")
    assert other.acquire()  # "another run", holding the lock on m.npz
    epochs = []
    with pytest.raises(CheckpointError, match=rf"another gpumlp run \(pid {os.getpid()}: .*\) is saving to "):
        run(TrainConfig(**RUN), mnist_dir, tmp_path / "m.npz", log=lambda *_: None, on_epoch=epochs.append)
    assert epochs == [] and not (tmp_path / "m.npz").exists()
    monkeypatch.chdir(tmp_path)  # a default name moves on to the next free one instead
    held = RunLock(Path("checkpoints") / "784-24-10-sigmoid-mse.npz")  # a run that has not saved yet
    assert held.acquire()
    (tmp_path / "checkpoints" / "784-24-10-sigmoid-mse-2.npz").write_bytes(b"an earlier run")
    assert run(TrainConfig(**RUN), mnist_dir, log=lambda *_: None).checkpoint.name == "784-24-10-sigmoid-mse-3.npz"
    other.release(), held.release()


@pytest.mark.parametrize("obstacle", ["folder", "read-only"])
def test_an_unwritable_metrics_file_is_refused_before_the_first_epoch(tmp_path, mnist_dir, obstacle):
    from gpumlp.errors import CheckpointError

    metrics = tmp_path / "m.npz.metrics.jsonl"
    if obstacle == "folder":
        metrics.mkdir()
    else:
        metrics.write_text("")
        metrics.chmod(0o444)
    epochs = []
    with pytest.raises(CheckpointError, match=f"{metrics}: a folder is there|{metrics} is read-only"):
        run(TrainConfig(**RUN), mnist_dir, tmp_path / "m.npz", log=lambda *_: None, on_epoch=epochs.append)
    assert epochs == [] and not (tmp_path / "m.npz").exists()


def test_a_full_disk_for_the_metrics_file_warns_once_and_keeps_the_run(tmp_path, mnist_dir, monkeypatch):
    """Before: the OSError ended the run after epoch 1 and left a 0-byte metrics file."""
    import errno

    from gpumlp.formats import atomic, checkpoint

    real = atomic.atomic_write

    def disk_full(path, write, *how):
        def fail(f):
            f.write(b"{")
            raise OSError(errno.ENOSPC, "No space left on device")

        return real(path, fail, *how)

    monkeypatch.setattr(atomic, "atomic_write", disk_full)  # the metrics writes; native.py holds its own
    lines = []
    result = run(TrainConfig(**{**RUN, "epochs": 3}), mnist_dir, tmp_path / "m.npz", log=lines.append)
    warnings = [line for line in lines if line.startswith("warning")]
    assert warnings == [
        f"warning: cannot write {tmp_path / 'm.npz.metrics.jsonl'}: No space left on device; training goes on, "
        "and the final save keeps every epoch"
    ]
    assert len(result.history) == 3 and checkpoint.read_metadata(tmp_path / "m.npz")["train_state"]["epochs_done"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]  # no 0-byte metrics file, no temporary


# ---------------------------------------------------------------- the Python API refuses what the CLI refuses

_X = np.random.default_rng(0).random((30, 784))
_Y = np.random.default_rng(1).integers(0, 10, 30)


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"y": np.r_[_Y[:-1], -1]}, "y_train holds label -1; labels are the digits 0-9"),  # trained as 9 before
        ({"y": np.r_[_Y[:-1], 10]}, "y_train holds label 10"),  # IndexError on CPU, another class on a GPU
        ({"y": _Y.astype(float)}, "y_train must be integer digit labels 0-9, got an array of float64"),
        ({"y": _Y > 4}, "got an array of bool"),
        ({"y": _Y[:-1]}, r"y_train has shape \(29,\): one label per image needs \(30,\)"),
        ({"X_val": _X[:4], "y_val": np.array([0, 1, 2, 12])}, "y_val holds label 12"),
        ({"X_val": _X[:4], "y_val": np.array([0, 1, 2])}, r"y_val has shape \(3,\)"),
        ({"dropout": 1.5}, r"--dropout must be in \[0, 1\)"),
        ({"dropout": -1}, r"--dropout must be in \[0, 1\)"),
        ({"lr": -1}, "--lr must be a positive"),
        ({"lr": float("nan")}, "--lr must be a finite number"),
        ({"optimizer": "momentum", "momentum": 2}, r"--momentum must be in \[0, 1\)"),
        ({"batch_size": -1}, "--batch-size must be at least 1"),  # "trained" with loss 0.0 before
        ({"batch_size": 0}, "--batch-size must be at least 1"),  # ZeroDivisionError before
        ({"batch_size": 2.5}, "--batch-size must be a whole number"),
        ({"seed": -1}, "--seed must be 0 or more"),  # ValueError before
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"rotate": float("inf"), "augment": "affine"}, "--rotate must be a finite number"),
    ],
)
def test_fit_refuses_every_bad_value_with_the_clis_message(change, fragment):
    change = dict(change)
    y = change.pop("y", _Y)
    kwargs = {"epochs": 1, "batch_size": 10, "lr": 0.5, "seed": 0, **change}
    model = MLP((784, 8, 10))
    before = model.theta.copy()
    with pytest.raises(ConfigError, match=fragment):
        fit(model, _X, y, **kwargs)
    np.testing.assert_array_equal(model.theta, before)  # refused before any step


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"seed": -1}, r"seed must be a whole number 0 or more \(got -1\)"),
        ({"sizes": [784, 10.9]}, r"layer sizes must be whole numbers.*\(got 10.9\)"),  # truncated to 10 before
        ({"sizes": "784,100000000,10"}, "has 79,500,000,010 parameters in 2 layers; gpumlp trains at most"),
    ],
)
def test_mlp_refuses_bad_values(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        MLP(**kwargs)


def test_loss_and_grads_and_evaluate_check_labels_on_the_host():
    model = MLP((784, 8, 10))
    with pytest.raises(ConfigError, match="y holds label -1"):
        model.loss_and_grads(_X, np.full(30, -1))
    with pytest.raises(ConfigError, match=r"y has shape \(3,\): one label per image needs \(30,\)"):
        evaluate(model, _X, _Y[:3])


@pytest.mark.parametrize("text", ["784 100 10", "784, 100, 10", " 784,100 ,10 "])
def test_layers_accept_spaces_or_commas(text):
    assert TrainConfig(sizes=text).sizes == (784, 100, 10)


def test_layers_say_which_item_is_wrong():
    """Before: "784 1OO 10" became 784100 ... and the message showed "(78410010,)"."""
    with pytest.raises(ConfigError, match=r"--layers '784 1OO 10': '1OO' is not a layer size"):
        TrainConfig(sizes="784 1OO 10")
