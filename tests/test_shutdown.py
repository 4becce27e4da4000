"""Every way `gpumlp train` can end keeps its finished epochs: SIGTERM, SIGHUP and SIGINT sent to a
real process, a closed or failing stdout, a disk too small for the checkpoint (refused before
epoch 1) or full at the end (saved elsewhere, and said where), and temporary files a killed writer
left (removed by the next run, a live writer's never)."""

from __future__ import annotations

import errno
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gpumlp.formats import checkpoint, native
from standins.entry_point import run_main as gpumlp  # the real entry point, in-process

SMALL = ["--layers", "784,24,10", "--train-size", "2000", "--val-size", "300", "--batch-size", "20"]
EXE = str(Path(sys.executable).parent / "gpumlp")


def epochs_in(path: Path) -> int:
    return checkpoint.read_metadata(path)["train_state"]["epochs_done"]


def start(ckpt: Path, mnist_dir, *extra, **popen) -> subprocess.Popen:
    """A real `gpumlp train` of 1,000 short epochs (~15 ms each), far from done when it is stopped."""
    argv = [EXE, "train", *SMALL, "--epochs", "1000", "--save", str(ckpt), *extra]
    env = dict(os.environ, GPUMLP_DATA_DIR=str(mnist_dir))
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen(argv, text=True, env=env, **popen)


def first_epoch(proc: subprocess.Popen) -> list[str]:
    """The lines `proc` printed up to and including its first epoch line: epoch 1 is finished."""
    lines = []
    while not (lines and lines[-1].startswith(("epoch ", '{"event": "epoch"'))):
        line = proc.stdout.readline()
        assert line, f"ended before an epoch: {proc.communicate()}"
        lines.append(line)
    return lines


def printed_epochs(text: str) -> int:
    return sum(line.startswith(("epoch ", '{"event": "epoch"')) for line in text.splitlines())


def assert_kept(ckpt: Path, err_line: str, printed: int, why: str) -> None:
    """Every printed epoch is in the checkpoint, the line says so with the command that goes on,
    and nothing hidden (lock, temporary) is left beside it."""
    done = epochs_in(ckpt)
    assert done >= printed >= 1
    go_on = shlex.join(["gpumlp", "train", "--resume", str(ckpt), "--epochs", "1000"])
    assert err_line == f"{why}: epochs 1-{done} of 1000 are saved in {ckpt}; resume with: {go_on}"
    assert len((ckpt.with_name(ckpt.name + ".metrics.jsonl")).read_text().splitlines()) == done  # they agree
    assert not [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")]  # no stale lock, no temporary


@pytest.mark.parametrize(
    "signum, code, why",
    [
        (signal.SIGTERM, 143, "interrupted by SIGTERM"),  # timeout, docker stop, systemd, Slurm
        (signal.SIGHUP, 129, "interrupted by SIGHUP"),  # the terminal closed
        (signal.SIGINT, 130, "interrupted"),  # Ctrl-C: the control, the path the others now share
    ],
)
def test_a_real_signal_after_epoch_one_keeps_every_printed_epoch(tmp_path, mnist_dir, signum, code, why):
    """Before the fix SIGTERM and SIGHUP killed the process: no checkpoint, a stale .m.npz.lock."""
    ckpt = tmp_path / "m.npz"
    proc = start(ckpt, mnist_dir, "-q")
    seen = first_epoch(proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert_kept(ckpt, err.rstrip("\n"), printed_epochs("".join(seen) + out), why)


def test_a_second_signal_during_the_save_waits_for_it_and_the_first_one_counts(tmp_path, mnist_dir):
    """Two signals sent back to back may both be pending when Python next looks (it then runs
    SIGINT's handler before SIGTERM's, by number): whichever it handled first decides both the
    line and the exit status, and they agree. Before the fix the line said Ctrl-C's "interrupted"
    and the status SIGTERM's 143."""
    ckpt = tmp_path / "m.npz"
    proc = start(ckpt, mnist_dir, "-q")
    seen = first_epoch(proc)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)  # while the first one's save is under way, or just before it
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (143, 130), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    why = {143: "interrupted by SIGTERM", 130: "interrupted"}[proc.returncode]
    assert_kept(ckpt, err.rstrip("\n"), printed_epochs("".join(seen) + out), why)


def test_a_closed_stdout_keeps_the_epochs_and_exits_141(tmp_path, mnist_dir):
    """`gpumlp train … --log-format json | head -1`: before the fix, exit 1 after epoch 2, no
    checkpoint, no word (click's broken-pipe exit skipped the save)."""
    ckpt = tmp_path / "m.npz"
    proc = start(ckpt, mnist_dir, "--log-format", "json")
    first_epoch(proc)  # `head -1` has read its line …
    proc.stdout.close()  # … and exits: the next epoch's line meets a closed pipe
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 141, err
    last = err.splitlines()[-1]  # (the first line is the "training …" message, on stderr with json)
    assert "Traceback" not in err and err.count("\n") == 2, err
    assert_kept(ckpt, last, 1, "output closed")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_stdout_that_cannot_be_written_keeps_the_epochs_and_exits_2(tmp_path, mnist_dir):
    """stdout on a full device: before the fix, an OSError traceback and nothing saved."""
    ckpt = tmp_path / "m.npz"
    with open("/dev/full", "w") as full:
        proc = start(ckpt, mnist_dir, "--log-format", "json", stdout=full)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "Traceback" not in err and err.count("\n") == 2, err
    assert_kept(ckpt, err.splitlines()[-1], 1, "cannot write output (No space left on device)")


def fake_statvfs(free_bytes: int):
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        return os.statvfs_result((*st[:4], free_bytes // st.f_frsize, *st[5:]))

    return statvfs


def test_a_disk_too_small_for_the_checkpoint_is_refused_before_epoch_one(tmp_path, mnist_dir, monkeypatch, capsys):
    """784-800-10 with Adam: 636,010 parameters × 3 copies × 4 bytes ≈ 7.3 MiB; 1 MiB free."""
    monkeypatch.setattr(os, "statvfs", fake_statvfs(2**20))
    ckpt = tmp_path / "m.npz"
    argv = ["train", *SMALL, "--layers", "784,800,10", "--optimizer", "adam", "--epochs", "2", "--save", ckpt]
    code, out, err = gpumlp(monkeypatch, capsys, *argv, "--data-dir", mnist_dir)
    assert code == 2 and "epoch " not in out, out
    assert err == (
        f"error: {tmp_path} has 1.0 MiB free, and the checkpoint needs about 7.3 MiB: "
        "free some space there or choose another --save path\n"
    )
    assert not list(tmp_path.iterdir())  # no lock left, nothing written


def test_a_real_small_tmpfs_is_refused_before_epoch_one(tmp_path, mnist_dir):
    """The same, on a real 1 MiB tmpfs (where this process may mount one)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not allowed here (the fault-injected test above covers it)")
    try:
        argv = [EXE, "train", *SMALL, "--layers", "784,800,10", "--epochs", "2", "--save", str(mount / "m.npz")]
        env = dict(os.environ, GPUMLP_DATA_DIR=str(mnist_dir))
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        assert proc.returncode == 2 and "epoch " not in proc.stdout
        assert proc.stderr.startswith(f"error: {mount} has ") and proc.stderr.count("\n") == 1
        assert "free, and the checkpoint needs about 2.5 MiB: free some space there or choose" in proc.stderr
        assert not list(mount.iterdir())
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def full_disk_at(folder: Path, monkeypatch) -> None:
    """Checkpoints written in ``folder`` fail with ENOSPC (metrics files, smaller, still fit), as on a
    disk that filled during training."""
    real_write = native.atomic_write

    def write(path, write, what="a file", fix=""):
        def no_space(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        full = Path(path).parent == folder and what == "a checkpoint"
        return real_write(path, no_space if full else write, what, fix)

    monkeypatch.setattr(native, "atomic_write", write)
    monkeypatch.setattr(tempfile, "tempdir", str(folder.parent / "spare"))  # where the fallback goes
    (folder.parent / "spare").mkdir()


def test_a_full_disk_at_the_final_save_saves_elsewhere_and_says_where(tmp_path, mnist_dir, monkeypatch, capsys):
    """Before the fix: `error: cannot write …: No space left on device`, both epochs lost, and the
    metrics file claiming them."""
    folder = tmp_path / "full"
    full_disk_at(folder, monkeypatch)
    ckpt = folder / "m.npz"
    code, out, err = gpumlp(monkeypatch, capsys, "train", *SMALL, "-q", "--epochs", "2", "--save", ckpt)
    rescued = tmp_path / "spare" / "m.rescued.npz"
    assert code == 2
    assert err == (
        f"error: cannot write {ckpt}: No space left on device; every epoch is saved in {rescued} instead "
        f"(move it to {ckpt} once there is room)\n"
    )
    assert epochs_in(rescued) == 2 and checkpoint.read_metadata(rescued)["test_accuracy"] > 0.5
    assert len((tmp_path / "spare" / "m.rescued.npz.metrics.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in folder.iterdir()) == []  # no metrics file claiming a checkpoint that is not there


def test_ctrl_c_on_a_full_disk_saves_elsewhere_and_resumes_from_there(tmp_path, mnist_dir, monkeypatch, capsys):
    folder = tmp_path / "full"
    full_disk_at(folder, monkeypatch)
    ckpt = folder / "m.npz"

    def stop_after_two(self, stats):
        if stats.epoch == 2:
            raise KeyboardInterrupt

    from gpumlp.cli.display import TrainDisplay

    monkeypatch.setattr(TrainDisplay, "epoch", stop_after_two)
    code, out, err = gpumlp(monkeypatch, capsys, "train", *SMALL, "-q", "--epochs", "4", "--save", ckpt)
    rescued = tmp_path / "spare" / "m.rescued.npz"
    go_on = shlex.join(["gpumlp", "train", "--resume", str(rescued), "--epochs", "4"])
    assert code == 130
    assert err == (
        f"interrupted: epochs 1-2 of 4 are saved in {rescued} (cannot write {ckpt}: No space left on device; "
        f"moved there instead); resume with: {go_on}\n"
    )
    assert epochs_in(rescued) == 2


def test_temporary_files_of_a_dead_writer_are_removed_and_a_live_ones_kept(tmp_path, mnist_dir, monkeypatch, capsys):
    """`kill -9` during a save left 15-45 MB hidden temporary files forever before the fix."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        stale = [
            tmp_path / f".m.npz.{dead.pid}.k2j4x9_a.tmp",
            tmp_path / f".m.npz.metrics.jsonl.{dead.pid}.q8w1zz0e.tmp",
        ]
        kept = [tmp_path / f".m.npz.{live.pid}.abcd1234.tmp", tmp_path / ".other.npz.1.abcd1234.tmp"]
        for p in stale + kept:
            p.write_bytes(b"x" * 100)
        argv = ["train", *SMALL, "-q", "--epochs", "1", "--save", tmp_path / "m.npz"]
        code, out, err = gpumlp(monkeypatch, capsys, *argv)
    finally:
        live.kill()
        live.wait()
    assert code == 0, err
    assert f"removed 2 temporary file(s) a killed run left beside {tmp_path / 'm.npz'}\n" in out
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_temporary_files_carry_their_writers_pid(tmp_path, monkeypatch):
    from gpumlp.formats import atomic

    names = []
    atomic.atomic_write(tmp_path / "f.bin", lambda f: names.extend(p.name for p in tmp_path.iterdir()))
    assert names[0].startswith(f".f.bin.{os.getpid()}.") and names[0].endswith(".tmp")


def test_sigterm_before_the_command_runs_is_one_line_and_143(tmp_path):
    """A SIGTERM while `gpumlp train` sets up (typer turns any KeyboardInterrupt there into a bare
    exit 130): still 143 and one line saying which signal."""
    code = (
        "import os, signal, sys\n"
        "import gpumlp.cli.commands as c\n"
        "c.train_arguments = lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM)\n"
        "sys.argv = ['gpumlp', 'train']\n"
        "c.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert (proc.returncode, proc.stderr) == (143, "interrupted by SIGTERM\n")


def no_space_anywhere(folder: Path, monkeypatch, after: int = 0) -> Path:
    """Every checkpoint write fails with ENOSPC after the first ``after`` ones: the path, the
    fallback beside it and the one in the temp folder (``spare``, returned) alike."""
    real_write, written = native.atomic_write, []

    def write(path, write, what="a file", fix=""):
        def no_space(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        full = what == "a checkpoint" and len(written) >= after
        written.append(path)
        return real_write(path, no_space if full else write, what, fix)

    monkeypatch.setattr(native, "atomic_write", write)
    spare = folder.parent / "spare"
    spare.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spare))
    return spare


def test_a_run_that_cannot_be_saved_anywhere_says_what_is_lost(tmp_path, mnist_dir, monkeypatch, capsys):
    """Before the fix: `error: cannot write …: No space left on device`, as if a fallback had been
    found, with no word of the lost epochs."""
    ckpt = tmp_path / "full" / "m.npz"
    spare = no_space_anywhere(ckpt.parent, monkeypatch)
    code, out, err = gpumlp(monkeypatch, capsys, "train", *SMALL, "-q", "--epochs", "2", "--save", ckpt)
    assert code == 2 and printed_epochs(out) == 2
    assert err == (
        f"error: nothing could be saved, epochs 1-2 of 2 lost (cannot write {ckpt}: No space left on device, "
        f"nor as m.rescued.npz beside it or in {spare}); free some space or choose another --save path, "
        "and run again\n"
    )
    assert list(ckpt.parent.iterdir()) == [] and list(spare.iterdir()) == []  # no metrics file, lock or part


def test_ctrl_c_that_cannot_save_anywhere_says_so_and_exits_2(tmp_path, mnist_dir, monkeypatch, capsys):
    ckpt = tmp_path / "full" / "m.npz"
    spare = no_space_anywhere(ckpt.parent, monkeypatch)

    def stop_after_two(self, stats):
        if stats.epoch == 2:
            raise KeyboardInterrupt

    from gpumlp.cli.display import TrainDisplay

    monkeypatch.setattr(TrainDisplay, "epoch", stop_after_two)
    code, out, err = gpumlp(monkeypatch, capsys, "train", *SMALL, "-q", "--epochs", "4", "--save", ckpt)
    assert code == 2
    assert err.startswith("interrupted: nothing could be saved, epochs 1-2 of 4 lost (cannot write") and (
        err.count("\n") == 1
    ), err
    assert list(ckpt.parent.iterdir()) == [] and list(spare.iterdir()) == []


def test_a_full_disk_after_an_early_save_names_what_the_checkpoint_still_holds(
    tmp_path, mnist_dir, monkeypatch, capsys
):
    ckpt = tmp_path / "full" / "m.npz"
    spare = no_space_anywhere(ckpt.parent, monkeypatch, after=1)  # --save-every 1 saves epoch 1, then no more
    args = ["train", *SMALL, "-q", "--epochs", "3", "--save-every", "1", "--save", ckpt]
    code, out, err = gpumlp(monkeypatch, capsys, *args)
    go_on = shlex.join(["gpumlp", "train", "--resume", str(ckpt), "--epochs", "3", "--save-every", "1"])
    assert code == 2
    assert err.splitlines()[-1] == (
        f"error: epochs 2-3 of 3 could not be saved (cannot write {ckpt}: No space left on device, nor as "
        f"m.rescued.npz beside it or in {spare}); {ckpt} still holds epoch 1: free some space, then resume "
        f"with: {go_on}"
    )
    assert epochs_in(ckpt) == 1 and len(Path(f"{ckpt}.metrics.jsonl").read_text().splitlines()) == 1  # they agree
