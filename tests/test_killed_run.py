"""A run killed with SIGKILL (nothing of gpumlp runs) leaves its metrics file ahead of its
checkpoint: the one is rewritten every epoch, the other saved every --save-every epochs. The next run
on that path reconciles the two and says so: a resumed run rewrites the file to the checkpoint's
history, a new one moves it aside. Real processes, a real `kill -9`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpumlp.formats import checkpoint

EXE = str(Path(sys.executable).parent / "gpumlp")
# Epochs long enough (~0.1-0.5 s) that the kill lands well before epoch 4's save.
SMALL = ["--layers", "784,64,10", "--train-size", "10000", "--val-size", "300", "--batch-size", "20", "-q"]


def gpumlp(mnist_dir, *argv: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, GPUMLP_DATA_DIR=str(mnist_dir))
    return subprocess.Popen([EXE, *argv], text=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def metrics_of(ckpt: Path) -> list[dict]:
    return [json.loads(line) for line in ckpt.with_name(ckpt.name + ".metrics.jsonl").read_text().splitlines()]


def history_of(ckpt: Path) -> list[dict]:
    return checkpoint.read_metadata(ckpt)["history"]


@pytest.fixture
def killed(tmp_path, mnist_dir) -> Path:
    """A run saving every 2 epochs, killed with SIGKILL just after epoch 3's line: its checkpoint
    holds 2 epochs, its metrics file 3."""
    ckpt = tmp_path / "run.npz"
    proc = gpumlp(mnist_dir, "train", *SMALL, "--epochs", "50", "--save", str(ckpt), "--save-every", "2")
    while not (line := proc.stdout.readline()).startswith("epoch  3/"):
        assert line, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert len(metrics_of(ckpt)) == 3 and len(history_of(ckpt)) == 2  # ahead, as a kill -9 leaves it
    return ckpt


def test_a_resumed_run_rewrites_the_metrics_file_to_its_checkpoint_and_says_so(killed, mnist_dir):
    proc = gpumlp(mnist_dir, "train", "--resume", str(killed), "--epochs", "4")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    metrics = killed.with_name("run.npz.metrics.jsonl")
    line = f"{metrics} had 3 epochs and its checkpoint holds 2 (a run was killed before saving): "
    assert line + "rewrote it to the checkpoint's 2 epochs" in out.splitlines()
    assert metrics_of(killed) == history_of(killed)  # they agree …
    assert [e["epoch"] for e in metrics_of(killed)] == [1, 2, 3, 4]  # … and epoch 3 is the resumed run's


def test_a_new_run_on_that_path_moves_the_metrics_file_aside(killed, mnist_dir):
    before = killed.with_name("run.npz.metrics.jsonl").read_text()
    proc = gpumlp(mnist_dir, "train", *SMALL, "--epochs", "1", "--save", str(killed))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    aside = killed.with_name("run.npz.metrics.orphaned-1.jsonl")
    said = "had 3 epochs and its checkpoint holds 2 (a run was killed before saving): moved it aside to "
    assert said + aside.name in out
    assert aside.read_text() == before  # the killed run's record, kept
    assert metrics_of(killed) == history_of(killed) and len(history_of(killed)) == 1


def test_a_metrics_file_without_its_checkpoint_is_moved_aside(tmp_path, mnist_dir):
    ckpt = tmp_path / "run.npz"
    (tmp_path / "run.npz.metrics.jsonl").write_text('{"epoch": 1}\n')  # killed before its first save
    proc = gpumlp(mnist_dir, "train", *SMALL, "--epochs", "1", "--save", str(ckpt))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "had 1 epoch and its checkpoint is missing (a run was killed before saving)" in out
    assert (tmp_path / "run.npz.metrics.orphaned-1.jsonl").read_text() == '{"epoch": 1}\n'
    assert metrics_of(ckpt) == history_of(ckpt)


def test_metrics_that_agree_with_the_checkpoint_are_left_alone(tmp_path, mnist_dir):
    ckpt = tmp_path / "run.npz"
    proc = gpumlp(mnist_dir, "train", *SMALL, "--epochs", "1", "--save", str(ckpt))
    assert proc.communicate(timeout=300) and proc.returncode == 0
    proc = gpumlp(mnist_dir, "train", "--resume", str(ckpt), "--epochs", "2")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "killed" not in out + err and not list(tmp_path.glob("*orphaned*"))
