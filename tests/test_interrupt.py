"""Ctrl-C at any moment of `gpumlp train` keeps every completed epoch, says so in one line on
stderr with the command that goes on, and exits 130."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpumlp.formats import atomic, checkpoint, native
from gpumlp.training import run as train_mod
from standins.entry_point import run_main as gpumlp  # the real entry point, in-process

SMALL = ["--layers", "784,24,10", "--train-size", "2000", "--val-size", "300", "--batch-size", "20", "-q"]


def epochs_in(path: Path) -> int:
    return checkpoint.read_metadata(path)["train_state"]["epochs_done"]


def ctrl_c(*_, **__):
    raise KeyboardInterrupt


def test_ctrl_c_while_mnist_loads_says_nothing_was_trained(tmp_path, mnist_dir, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "load_dataset", ctrl_c)
    code, out, err = gpumlp(monkeypatch, capsys, "train", *SMALL, "--save", tmp_path / "m.npz")
    assert code == 130
    assert err == "interrupted before the first epoch ended: nothing to save\n"
    assert not any(tmp_path.iterdir())  # no checkpoint, no metrics, no lock file


def test_ctrl_c_in_the_final_test_pass_saves_every_epoch_and_says_how_to_test(tmp_path, mnist_dir, monkeypatch, capsys):
    """Before the fix typer turned this KeyboardInterrupt into a silent exit 130 and nothing was saved."""
    ckpt = tmp_path / "with space" / "m.npz"
    monkeypatch.setattr(train_mod, "evaluate", ctrl_c)
    code, out, err = gpumlp(
        monkeypatch, capsys, "train", *SMALL, "--epochs", "2", "--save", ckpt, "--data-dir", mnist_dir
    )
    assert code == 130 and err.count("\n") == 1 and "Traceback" not in err
    test = shlex.join(["gpumlp", "test", str(ckpt), "--data-dir", str(mnist_dir)])
    assert err == f"interrupted in the test pass: all 2 epochs are saved in {ckpt}; test it with: {test}\n"
    meta = checkpoint.read_metadata(ckpt)
    assert meta["train_state"]["epochs_done"] == 2 and meta["test_accuracy"] is None
    assert (tmp_path / "with space" / "m.npz.metrics.jsonl").read_text().count("\n") == 2


def test_ctrl_c_during_the_final_save_lets_the_save_finish(tmp_path, mnist_dir, monkeypatch, capsys):
    """A real SIGINT in the middle of writing the final checkpoint: the write completes (atomic.py
    holds the signal back), then the run stops with exit 130 and says it is all saved."""
    real_write = atomic.atomic_write

    def interrupted_write(path, write, what="a file", fix=""):
        def write_then_ctrl_c(f):
            if what == "a checkpoint":
                os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the write
            write(f)

        return real_write(path, write_then_ctrl_c, what, fix)

    monkeypatch.setattr(native, "atomic_write", interrupted_write)  # where gpumlp's own formats write
    ckpt = tmp_path / "m.npz"
    code, out, err = gpumlp(monkeypatch, capsys, "train", *SMALL, "--epochs", "2", "--test-size", "500", "--save", ckpt)
    assert code == 130
    assert err == f"interrupted: all 2 epochs are tested and saved in {ckpt}\n"
    meta = checkpoint.read_metadata(ckpt)
    assert meta["train_state"]["epochs_done"] == 2 and meta["test_accuracy"] > 0.5 and meta["test_size"] == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "m.npz.metrics.jsonl"]  # no temporary left


def test_ctrl_c_mid_run_resume_command_is_quoted_and_complete(tmp_path, mnist_dir, monkeypatch, capsys):
    """The printed command is shell-quoted and keeps --data-dir and --save-every; pasted, it finishes the run."""
    ckpt = tmp_path / "it's here" / "m.npz"
    epochs_seen = []

    def on_epoch(self, stats):
        epochs_seen.append(stats.epoch)
        if stats.epoch == 2:
            raise KeyboardInterrupt  # between epochs 2 and 3: epoch 2 is complete

    from gpumlp.cli.display import TrainDisplay

    monkeypatch.setattr(TrainDisplay, "epoch", on_epoch)
    argv = ["train", *SMALL, "--epochs", "4", "--save", ckpt, "--data-dir", mnist_dir, "--save-every", "3"]
    code, _, err = gpumlp(monkeypatch, capsys, *argv)
    command = shlex.join(
        ["gpumlp", "train", "--resume", str(ckpt), "--epochs", "4", "--save-every", "3", "--data-dir", str(mnist_dir)]
    )
    assert code == 130
    assert err == f"interrupted: epochs 1-2 of 4 are saved in {ckpt}; resume with: {command}\n"
    assert epochs_in(ckpt) == 2
    monkeypatch.undo()
    code, _, err = gpumlp(monkeypatch, capsys, *shlex.split(command)[1:])
    assert code == 0, err
    assert epochs_in(ckpt) == 4


def test_ctrl_c_in_other_commands_is_one_line(tmp_path, monkeypatch, capsys):
    from gpumlp.formats import checkpoint as ckpt_mod

    monkeypatch.setattr(ckpt_mod, "describe", ctrl_c)
    code, out, err = gpumlp(monkeypatch, capsys, "info", tmp_path / "m.npz")
    assert code == 130 and err == "interrupted\n"


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.15, 0.35, 0.6, 0.8, 0.9, 1.0])
def test_real_sigint_at_any_moment_keeps_every_printed_epoch(tmp_path, mnist_dir, delay):
    """A real `gpumlp train` process gets SIGINT `delay` s after it printed its first line (on a
    2-core VM an epoch takes ~0.25 s, so the delays land in epochs, between them, in the test pass
    and in the save): whatever it was doing, it exits 130 with one
    line on stderr, and the checkpoint holds at least every epoch it reported."""
    ckpt = tmp_path / "run.npz"
    exe = Path(sys.executable).parent / "gpumlp"
    args = [str(exe), "train", "--epochs", "4", "--train-size", "12000", "--val-size", "500", "--layers", "784,64,10"]
    env = dict(os.environ, GPUMLP_DATA_DIR=str(mnist_dir))
    proc = subprocess.Popen(
        [*args, "-q", "--save", str(ckpt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    first = proc.stdout.readline()  # "training MLP(...)": MNIST is loaded
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    printed = sum(line.startswith("epoch ") for line in (first + out).splitlines())
    if proc.returncode == 0:  # finished before the signal came
        assert epochs_in(ckpt) == 4
        return
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and err.startswith("interrupted") and "Traceback" not in err, err
    if printed:
        assert epochs_in(ckpt) >= printed
        assert str(ckpt) in err
    assert not list(tmp_path.glob(".*"))  # no temporary or lock file left behind


def test_real_sigint_during_start_up_is_one_line(tmp_path, mnist_dir):
    """SIGINT while the process imports and loads MNIST (before it prints anything)."""
    exe = Path(sys.executable).parent / "gpumlp"
    env = dict(os.environ, GPUMLP_DATA_DIR=str(mnist_dir))
    proc = subprocess.Popen(
        [str(exe), "train", "--save", str(tmp_path / "m.npz")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and err.startswith("interrupted") and "Traceback" not in err, err


def test_ctrl_c_while_python_imports_the_cli_is_one_line(tmp_path):
    """The entry point (gpumlp.__main__:main) imports the CLI inside its own handler: a SIGINT that
    arrives while typer is being imported is "interrupted" and exit 130, not a traceback."""
    code = (
        "import os, signal, sys\n"
        "class CtrlCOnTyper:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'typer':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.meta_path.insert(0, CtrlCOnTyper())\n"
        "sys.argv = ['gpumlp', 'info', 'm.npz']\n"
        "from gpumlp.__main__ import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert (proc.returncode, proc.stderr) == (130, "interrupted\n")


def test_ctrl_c_before_a_resumed_runs_first_epoch_saves_its_epochs_on_the_new_path(
    tmp_path, mnist_dir, monkeypatch, capsys
):
    """--resume a.npz --save b.npz, stopped before any new epoch: b.npz gets a.npz's epochs, as the
    line says. Before the fix the resumed epochs counted as saved on b.npz, which did not exist."""
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    code, _, err = gpumlp(monkeypatch, capsys, "train", *SMALL, "--epochs", "1", "--save", a, "--data-dir", mnist_dir)
    assert code in (0, None), err
    monkeypatch.setattr(train_mod, "fit", ctrl_c)
    code, _, err = gpumlp(
        monkeypatch, capsys, "train", "--resume", a, "--save", b, "--epochs", "3", "--data-dir", mnist_dir
    )
    assert code == 130
    assert err.startswith(f"interrupted: epochs 1-1 of 3 are saved in {b}; resume with: ")
    assert epochs_in(b) == 1 and epochs_in(a) == 1
    assert len((tmp_path / "b.npz.metrics.jsonl").read_text().splitlines()) == 1
