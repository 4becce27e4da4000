"""A run that goes nowhere says so, once: from epoch 2 on, validation accuracy at chance and a
training loss that has not moved give one warning line (on stderr when piped), and the exit status
stays. Before, `--layers 784,100000,10` trained 374 s at 9.91%, loss 0.5000, and said nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from gpumlp.training.config import TrainConfig
from gpumlp.training.run import run
from gpumlp.training.state import EpochStats
from gpumlp.training.stopping import stalled

EXE = str(Path(sys.executable).parent / "gpumlp")
TINY = dict(sizes=(784, 16, 10), train_size=2000, val_size=300, test_size=100, batch_size=10, seed=0)


def epoch(n: int, loss: float, acc: float) -> EpochStats:
    return EpochStats(epoch=n, train_loss=loss, val_accuracy=acc, seconds=0.1, lr=0.5, batch_size=10)


def test_the_rule_needs_chance_accuracy_and_a_loss_that_has_not_moved_from_epoch_two():
    assert stalled([epoch(1, 0.5, 0.099)], 10) is None  # one epoch proves nothing
    assert stalled([epoch(1, 0.5, 0.099), epoch(2, 0.50004, 0.099)], 10).startswith("warning: after epoch 2")
    assert stalled([epoch(1, 0.5, 0.099), epoch(2, 0.5, 0.121)], 10) is None  # above chance + 2 points
    assert stalled([epoch(1, 0.5, 0.099), epoch(2, 0.4990, 0.099)], 10) is None  # the loss moves: 2e-3
    no_val = EpochStats(epoch=2, train_loss=0.5, val_accuracy=None, seconds=0.1, lr=0.5, batch_size=10)
    assert stalled([epoch(1, 0.5, 0.099), no_val], 10) is None  # nothing to judge chance by


def test_the_advice_points_the_lr_the_way_it_may_help():
    """Steps too small (a tiny lr) call for a larger one; anything else for a smaller one (saturated units)."""
    for lr, advice in ((1e-6, "try a larger --lr than 1e-06,"), (0.5, "try a smaller --lr than 0.5,")):
        first = EpochStats(epoch=1, train_loss=0.5, val_accuracy=0.099, seconds=0.1, lr=lr, batch_size=10)
        assert advice in stalled([first, replace(first, epoch=2)], 10)


def test_a_run_that_cannot_learn_warns_once_and_ends_as_usual(tmp_path, mnist_dir):
    """An lr of 1e-6 on sigmoid/mse: the loss moves in its fifth digit, accuracy stays at 9%."""
    lines = []
    cfg = TrainConfig(**TINY, activation="sigmoid", loss="mse", lr=1e-6, epochs=4)
    result = run(cfg, mnist_dir, tmp_path / "m.npz", log=lines.append)
    warnings = [line for line in lines if line.startswith("warning")]
    assert len(warnings) == 1, lines  # epochs 2, 3 and 4 all qualify: said once
    assert warnings[0].startswith("warning: after epoch 2 the validation accuracy is ")
    assert "chance for 10 classes" in warnings[0] and "try a larger --lr than 1e-06," in warnings[0]
    assert len(result.history) == 4 and (tmp_path / "m.npz").exists()


def test_a_run_that_learns_says_nothing(tmp_path, mnist_dir):
    lines = []
    run(TrainConfig(**TINY, lr=0.05, epochs=3), mnist_dir, tmp_path / "m.npz", log=lines.append)
    assert not [line for line in lines if "warning" in line], lines


def test_piped_the_warning_goes_to_stderr_and_the_exit_status_is_0(tmp_path, mnist_dir):
    argv = [EXE, "train", "--layers", "784,16,10", "--activation", "sigmoid", "--loss", "mse", "--lr", "1e-6"]
    argv += ["--train-size", "2000", "--val-size", "300", "--test-size", "100", "--epochs", "2"]
    env = dict(os.environ, GPUMLP_DATA_DIR=str(mnist_dir))
    proc = subprocess.run(
        [*argv, "--save", str(tmp_path / "m.npz")], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("warning")] != [], proc.stderr
    assert not [line for line in proc.stdout.splitlines() if line.startswith("warning")]
