"""gpumlp/formats/atomic.py: atomic writes through symlinks keeping the mode, Ctrl-C held back during a
write, the run lock, free default names, and the up-front check of a target."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys

import pytest

from gpumlp.errors import CheckpointError
from gpumlp.formats.atomic import DeferredInterrupt, RunLock, atomic_write, check_target, deferred_sigint, free_path


def test_an_overwrite_keeps_the_mode_of_the_file(tmp_path):
    target = tmp_path / "m.npz"
    target.write_bytes(b"old")
    target.chmod(0o640)
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o640


def test_a_new_file_gets_a_new_files_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "m.npz", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o644


def test_a_symlink_is_written_through_not_replaced(tmp_path):
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "m.npz"
    real.write_bytes(b"old")
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    atomic_write(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes() == b"new"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["m.npz"]  # the temporary was beside the real file


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "m.metrics.jsonl"
    target.write_text("epoch 1\n")

    def disk_full(f):
        f.write(b"half a line")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match=f"cannot write {target}: No space left on device"):
        atomic_write(target, disk_full)
    assert target.read_text() == "epoch 1\n" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_ctrl_c_during_a_write_waits_for_the_rename(tmp_path):
    target = tmp_path / "m.npz"

    def write(f):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, in the middle of the write
        f.write(b"complete")

    with pytest.raises(DeferredInterrupt):
        atomic_write(target, write)
    assert target.read_bytes() == b"complete"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    with pytest.raises(KeyboardInterrupt):  # and Ctrl-C works as before afterwards
        os.kill(os.getpid(), signal.SIGINT)


def test_deferred_sigint_without_a_signal_raises_nothing():
    with deferred_sigint():
        x = 1
    assert x == 1


def test_a_second_lock_on_the_same_target_is_refused_and_names_the_holder(tmp_path):
    target = tmp_path / "m.npz"
    first, second = RunLock(target), RunLock(target)
    assert first.acquire()
    assert not second.acquire()
    assert second.holder().startswith(f"pid {os.getpid()}: ")
    first.release()
    assert not (tmp_path / ".m.npz.lock").exists()  # no lock file left behind
    assert second.acquire()
    second.release()


def test_the_lock_is_per_real_file_and_held_across_processes(tmp_path):
    target = tmp_path / "m.npz"
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    code = (
        "import sys, time; from gpumlp.formats.atomic import RunLock; "
        f"assert RunLock({str(target)!r}).acquire(); print('held', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        lock = RunLock(link)  # another name for the same file
        assert not lock.acquire()
        assert lock.holder().startswith(f"pid {holder.pid}: ")
    finally:
        holder.kill()
        holder.wait()
    assert lock.acquire()  # the kernel drops the lock of a process that died
    lock.release()


def test_free_path_adds_the_first_free_suffix(tmp_path):
    base = tmp_path / "curves.png"
    assert free_path(base) == base
    base.write_bytes(b"")
    assert free_path(base) == tmp_path / "curves-2.png"
    (tmp_path / "curves-2.png").write_bytes(b"")
    assert free_path(base) == tmp_path / "curves-3.png"
    metrics = lambda p: [p.with_name(p.stem + ".metrics.jsonl")]  # noqa: E731
    (tmp_path / "run.metrics.jsonl").write_text("")  # a companion alone also takes the name
    assert free_path(tmp_path / "run.npz", metrics) == tmp_path / "run-2.npz"


def test_check_target_refuses_a_folder_a_read_only_file_and_a_special_file(tmp_path):
    (tmp_path / "dir.metrics.jsonl").mkdir()
    with pytest.raises(CheckpointError, match="a folder is there"):
        check_target(tmp_path / "dir.metrics.jsonl", "metrics file")
    ro = tmp_path / "ro.npz"
    ro.write_bytes(b"")
    ro.chmod(0o444)
    with pytest.raises(CheckpointError, match=r"read-only \(mode 444\): make it writable"):
        check_target(ro, "checkpoint")
    os.mkfifo(tmp_path / "fifo.npz")
    with pytest.raises(CheckpointError, match="not a regular file"):
        check_target(tmp_path / "fifo.npz", "checkpoint")
    assert check_target(tmp_path / "new" / "m.npz") == tmp_path / "new" / "m.npz"


def test_atomic_write_never_replaces_a_folder_or_a_special_file(tmp_path):
    """A rename onto /dev/null (as root) or a FIFO would replace the node itself: refused, untouched."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    for name, kind in (("fifo", "not a regular file"), ("folder", "a folder")):
        with pytest.raises(CheckpointError, match=f"cannot write the file to {tmp_path / name}: {kind}"):
            atomic_write(tmp_path / name, lambda f: f.write(b"x"), "the file")
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode) and (tmp_path / "folder").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder"], "no temporary file left"
