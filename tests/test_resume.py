"""Resuming: 4 epochs in one run equal 2 epochs, saved, then resumed to 4 — bit for bit."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpumlp.errors import ConfigError
from gpumlp.formats import checkpoint
from gpumlp.model import MLP
from gpumlp.training.config import TrainConfig, resume_config
from gpumlp.training.run import run
from gpumlp.training.runfiles import TrainingInterrupted

SMALL = dict(sizes=(784, 24, 10), train_size=3000, val_size=500, test_size=500, batch_size=16, lr=0.5, seed=7)


def quiet(*_):
    pass


def params_of(path) -> np.ndarray:
    model, _ = checkpoint.load(path)
    return model.theta


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_two_plus_two_epochs_equal_four_bit_for_bit(tmp_path, mnist_dir, suffix):
    full = run(TrainConfig(epochs=4, **SMALL), mnist_dir, tmp_path / f"full{suffix}", log=quiet)
    run(TrainConfig(epochs=2, **SMALL), mnist_dir, tmp_path / f"half{suffix}", log=quiet)
    resumed = run(TrainConfig(epochs=4, **SMALL), mnist_dir, log=quiet, resume=tmp_path / f"half{suffix}")
    assert resumed.checkpoint == tmp_path / f"half{suffix}"  # continues in place by default
    np.testing.assert_array_equal(params_of(tmp_path / f"half{suffix}"), params_of(tmp_path / f"full{suffix}"))
    assert [e.train_loss for e in resumed.history] == [e.train_loss for e in full.history]
    assert resumed.test_accuracy == full.test_accuracy
    meta = checkpoint.read_metadata(tmp_path / f"half{suffix}")
    assert meta["train_state"]["epochs_done"] == 4 and [e["epoch"] for e in meta["history"]] == [1, 2, 3, 4]


def test_changed_lr_is_recorded_in_history(tmp_path, mnist_dir):
    run(TrainConfig(epochs=1, **SMALL), mnist_dir, tmp_path / "m.npz", log=quiet)
    cfg = resume_config(checkpoint.read_metadata(tmp_path / "m.npz")["config"], {"epochs": 2, "lr": 0.1})
    run(cfg, mnist_dir, log=quiet, resume=tmp_path / "m.npz")
    history = checkpoint.read_metadata(tmp_path / "m.npz")["history"]
    assert [(e["epoch"], e["lr"]) for e in history] == [(1, 0.5), (2, 0.1)]


def test_contradicting_options_are_refused():
    saved = TrainConfig(**SMALL).to_dict()
    with pytest.raises(ConfigError, match=r"--layers 784,30,10 contradicts the checkpoint \(\[784, 24, 10\]\)"):
        resume_config(saved, {"sizes": "784,30,10"})
    with pytest.raises(ConfigError, match="--seed 1 contradicts"):
        resume_config(saved, {"seed": 1})
    assert resume_config(saved, {"sizes": "784,24,10", "epochs": 9, "lr": 0.2}).lr == 0.2  # same value: fine


def test_resume_needs_more_epochs_than_done(tmp_path, mnist_dir):
    run(TrainConfig(epochs=2, **SMALL), mnist_dir, tmp_path / "m.npz", log=quiet)
    with pytest.raises(ConfigError, match="already has 2 epochs; pass --epochs above 2"):
        run(TrainConfig(epochs=2, **SMALL), mnist_dir, log=quiet, resume=tmp_path / "m.npz")


def test_save_every_writes_during_training(tmp_path, mnist_dir):
    seen = []

    def on_epoch(stats):
        path = tmp_path / "m.npz"
        seen.append(checkpoint.read_metadata(path)["train_state"]["epochs_done"] if path.exists() else None)

    run(TrainConfig(epochs=5, **SMALL), mnist_dir, tmp_path / "m.npz", log=quiet, on_epoch=on_epoch, save_every=2)
    assert seen == [None, None, 2, 2, 4]  # on_epoch runs before that epoch's save


def test_interrupt_mid_epoch_saves_the_last_complete_epoch(tmp_path, mnist_dir, monkeypatch):
    """Ctrl-C in epoch 3 saves epoch 2 exactly; resuming it gives the uninterrupted result."""
    run(TrainConfig(epochs=2, **SMALL), mnist_dir, tmp_path / "two.npz", log=quiet)
    run(TrainConfig(epochs=4, **SMALL), mnist_dir, tmp_path / "four.npz", log=quiet)
    calls = {"n": 0}
    original = MLP.batch_loss_and_grads

    def interrupted(self, X, Y, masks=None, fused=None, losses=None):
        calls["n"] += 1
        if calls["n"] == 2 * 188 + 50:  # 188 batches of 16 per epoch: the middle of epoch 3
            raise KeyboardInterrupt
        return original(self, X, Y, masks, fused, losses)

    monkeypatch.setattr(MLP, "batch_loss_and_grads", interrupted)
    with pytest.raises(TrainingInterrupted) as e:
        run(TrainConfig(epochs=4, **SMALL), mnist_dir, tmp_path / "cut.npz", log=quiet)
    assert e.value.epochs_done == 2 and e.value.checkpoint == tmp_path / "cut.npz"
    assert e.value.resume_command == shlex.join(
        ["gpumlp", "train", "--resume", str(tmp_path / "cut.npz"), "--epochs", "4", "--data-dir", str(mnist_dir)]
    )
    np.testing.assert_array_equal(params_of(tmp_path / "cut.npz"), params_of(tmp_path / "two.npz"))
    monkeypatch.setattr(MLP, "batch_loss_and_grads", original)
    run(TrainConfig(epochs=4, **SMALL), mnist_dir, log=quiet, resume=tmp_path / "cut.npz")
    np.testing.assert_array_equal(params_of(tmp_path / "cut.npz"), params_of(tmp_path / "four.npz"))


def test_real_sigint_saves_prints_the_resume_command_and_exits_130(tmp_path, mnist_dir):
    """A real `gpumlp train` subprocess gets SIGINT after its first epoch line."""
    ckpt = tmp_path / "sig.npz"
    exe = Path(sys.executable).parent / "gpumlp"
    args = [str(exe), "train", "--epochs", "100000", "--train-size", "3000", "--val-size", "0", "--test-size", "0"]
    env = dict(os.environ, GPUMLP_DATA_DIR=str(mnist_dir))
    proc = subprocess.Popen(
        [*args, "--save", str(ckpt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if line.split()[:2] == ["epoch", "2/100000"] or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"gpumlp train --resume {ckpt} --epochs 100000" in err
    done = checkpoint.read_metadata(ckpt)["train_state"]["epochs_done"]
    assert done >= 2


def test_divergence_stops_keeps_the_last_finite_epoch_and_never_writes_nan(tmp_path, mnist_dir, monkeypatch, capsys):
    """Resuming with --lr 1e6 blows up in epoch 2: one line suggesting a lower --lr, exit 2, and the
    checkpoint holds epoch 1's (finite) parameters, exactly as before."""
    from gpumlp.cli import commands as cli

    small = ["--train-size", "2000", "--val-size", "0", "--test-size", "0", "--activation", "relu", "--loss", "ce"]
    ckpt = tmp_path / "d.npz"
    monkeypatch.setenv("GPUMLP_DATA_DIR", str(mnist_dir))
    for argv, expected in (
        (["train", "--epochs", "1", "--lr", "0.1", *small, "--save", str(ckpt)], 0),
        (["train", "--resume", str(ckpt), "--epochs", "3", "--lr", "1e6"], 2),
    ):
        before = params_of(ckpt) if ckpt.exists() else None
        monkeypatch.setattr(sys, "argv", ["gpumlp", *argv])
        with pytest.raises(SystemExit) as e:
            cli.main()
        assert e.value.code == expected
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Warning" not in err
    assert "training diverged in epoch 2 (loss nan): try a lower --lr than 1000000.0" in err
    assert f"saved the last finite epoch (1) to {ckpt}" in err
    np.testing.assert_array_equal(params_of(ckpt), before)
    assert checkpoint.read_metadata(ckpt)["train_state"]["epochs_done"] == 1


def test_divergence_in_the_first_epoch_saves_nothing(tmp_path, mnist_dir):
    from gpumlp.errors import GpumlpError

    cfg = TrainConfig(epochs=2, lr=1e6, activation="relu", loss="ce", train_size=2000, val_size=0, test_size=0)
    with pytest.raises(GpumlpError, match="diverged in epoch 1 .* nothing saved"):
        run(cfg, mnist_dir, tmp_path / "x.npz", log=quiet)
    assert not any(tmp_path.iterdir())


def test_a_training_run_records_the_blas_it_trained_through(tmp_path, mnist_dir, monkeypatch):
    from gpumlp.backends.blas import Blas
    from gpumlp.backends.cpu import CPU

    monkeypatch.setitem(CPU.__dict__, "blas", Blas("numpy"))  # numpy's own, as with GPUMLP_BLAS=numpy
    run(TrainConfig(epochs=1, **SMALL), mnist_dir, tmp_path / "m.npz", log=quiet)
    assert checkpoint.read_metadata(tmp_path / "m.npz")["blas"] == (CPU.blas.name or "none") == "numpy"


def test_init_on_resume_is_checked_against_the_default_the_run_used():
    """Before: a saved init of None (the activation's default) let any --init through."""
    saved = TrainConfig(**SMALL).to_dict()
    assert saved["init"] is None and saved["activation"] == "sigmoid"  # trained with xavier, the default
    with pytest.raises(ConfigError, match=r"--init normal contradicts the checkpoint \(xavier\)"):
        resume_config(saved, {"init": "normal"})
    assert resume_config(saved, {"init": "xavier", "epochs": 3}).epochs == 3


# One hidden layer of 512 at batch 128: its (128, 784) @ (784, 512) product is one that numpy's
# OpenBLAS rounds differently on 1 and on 2 threads.
THREADED = dict(sizes=(784, 512, 10), activation="relu", loss="ce", train_size=1280, val_size=0, test_size=256,
                batch_size=128, lr=0.1, seed=3)  # fmt: skip


def test_a_resumed_run_keeps_its_recorded_blas_thread_count(tmp_path, mnist_dir, monkeypatch):
    """The checkpoint records the run's BLAS threads and a resumed run trains with that count, not
    with what its own process would choose, so it still equals the uninterrupted run bit for bit;
    GPUMLP_THREADS overrides the record."""
    from gpumlp.backends import blas_threads

    seen = []  # the BLAS's thread count while each epoch trained

    def on_epoch(stats):
        seen.append(blas_threads.library_threads())

    monkeypatch.setenv("GPUMLP_THREADS", "1")
    run(TrainConfig(epochs=4, **THREADED), mnist_dir, tmp_path / "full.npz", log=quiet)
    run(TrainConfig(epochs=2, **THREADED), mnist_dir, tmp_path / "half.npz", log=quiet, on_epoch=on_epoch)
    assert checkpoint.read_metadata(tmp_path / "half.npz")["train_state"]["blas_threads"] == 1
    monkeypatch.delenv("GPUMLP_THREADS")
    monkeypatch.setattr(blas_threads, "_auto", (2, "auto: a stand-in for a quiet 2-core machine"))
    logs = []
    run(TrainConfig(epochs=4, **THREADED), mnist_dir, log=logs.append, resume=tmp_path / "half.npz", on_epoch=on_epoch)
    assert seen == [1, 1, 1, 1]
    assert any(line.endswith(", 1 BLAS thread (as the resumed run)") for line in logs), logs
    np.testing.assert_array_equal(params_of(tmp_path / "half.npz"), params_of(tmp_path / "full.npz"))
    assert checkpoint.read_metadata(tmp_path / "half.npz")["train_state"]["blas_threads"] == 1
    # a new run in this process takes the automatic choice, and records it
    run(TrainConfig(epochs=1, **THREADED), mnist_dir, tmp_path / "new.npz", log=quiet, on_epoch=on_epoch)
    assert seen[-1] == 2 and checkpoint.read_metadata(tmp_path / "new.npz")["train_state"]["blas_threads"] == 2
    # GPUMLP_THREADS wins over the record, and the checkpoint then records the new count
    monkeypatch.setenv("GPUMLP_THREADS", "2")
    run(TrainConfig(epochs=5, **THREADED), mnist_dir, log=quiet, resume=tmp_path / "half.npz", on_epoch=on_epoch)
    assert seen[-1] == 2 and checkpoint.read_metadata(tmp_path / "half.npz")["train_state"]["blas_threads"] == 2


def test_a_checkpoint_from_before_counts_were_recorded_resumes_with_the_blas_default(tmp_path, mnist_dir, monkeypatch):
    """Such a run trained with the BLAS's own count (every core, or OPENBLAS_NUM_THREADS): resuming
    keeps that count, not the automatic choice."""
    import json

    from gpumlp.backends import blas_threads

    monkeypatch.setenv("GPUMLP_THREADS", str(blas_threads.default_threads()))
    run(TrainConfig(epochs=1, **THREADED), mnist_dir, tmp_path / "old.json", log=quiet)
    monkeypatch.delenv("GPUMLP_THREADS")
    doc = json.loads((tmp_path / "old.json").read_text())
    del doc["train_state"]["blas_threads"]  # as gpumlp wrote it before
    (tmp_path / "old.json").write_text(json.dumps(doc))
    monkeypatch.setattr(
        blas_threads, "_auto", (blas_threads.default_threads() + 1, "auto: a stand-in that must not be used")
    )
    seen = []
    run(TrainConfig(epochs=2, **THREADED), mnist_dir, log=quiet, resume=tmp_path / "old.json",
        on_epoch=lambda stats: seen.append(blas_threads.library_threads()))  # fmt: skip
    assert seen == [blas_threads.default_threads()]
    assert (
        checkpoint.read_metadata(tmp_path / "old.json")["train_state"]["blas_threads"] == blas_threads.default_threads()
    )


def test_a_bad_recorded_blas_thread_count_is_refused(tmp_path):
    from gpumlp.errors import CheckpointError
    from gpumlp.formats.metadata import check_meta

    for bad in (0, "2", 1.5, True):
        meta = {"sizes": [784, 10], "activation": "relu", "loss": "ce", "dtype": "float32",
                "train_state": {"epochs_done": 1, "blas_threads": bad}}  # fmt: skip
        with pytest.raises(CheckpointError, match=r"metadata train_state\.blas_threads must be a thread count"):
            check_meta(tmp_path / "x.npz", meta)
    check_meta(tmp_path / "x.npz", {**meta, "train_state": {"epochs_done": 1, "blas_threads": None}})
