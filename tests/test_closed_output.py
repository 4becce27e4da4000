"""Every command, not only `train`, meets a closed standard output the same way: `gpumlp info CK |
head -c 10` and the like exit 141 (as a program killed by SIGPIPE) and say nothing on stderr.
Before, click's own handling exited 1. Real processes writing into a pipe whose reader is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).parent / "gpumlp")
CK = str(Path(__file__).parent.parent / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz")


def run_into_closed_pipe(argv: list[str], env: dict | None = None) -> tuple[int, str]:
    """Run ``gpumlp argv`` with stdout a pipe whose reader has already exited (``| head -1`` after
    its line): the first write meets EPIPE."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone
    try:
        proc = subprocess.run(
            [EXE, *argv], stdout=write, stderr=subprocess.PIPE, text=True, timeout=120, env=env or dict(os.environ)
        )
    finally:
        os.close(write)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    "argv",
    [["info", CK, "--json"], ["info", CK], ["devices"], ["--help"]],
    ids=["info-json", "info", "devices", "help"],
)
def test_a_command_whose_reader_is_gone_exits_141_quietly(argv):
    code, err = run_into_closed_pipe(argv)
    assert code == 141, err
    assert err == "", err  # no traceback, no "Exception ignored" from the interpreter's last flush


def test_gpumlp_test_whose_reader_is_gone_exits_141_quietly(mnist_dir):
    env = dict(os.environ, GPUMLP_DATA_DIR=str(mnist_dir))
    code, err = run_into_closed_pipe(["test", CK, "--test-size", "200"], env)
    assert code == 141, err
    assert err == "", err


def test_a_reader_that_takes_one_line_and_leaves():
    """`gpumlp devices | head -1` as the shell runs it: whatever the timing, exit 0 (all written
    before head left) or 141, never 1, and nothing on stderr."""
    proc = subprocess.run(
        f"{EXE} devices | head -1 >/dev/null; echo $PIPESTATUS", shell=True, executable="/bin/bash",
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.stdout.strip() in ("0", "141"), proc
    assert proc.stderr == "", proc.stderr


def test_a_command_started_with_stdout_closed_exits_0():
    """`gpumlp devices >&-`: Python starts with sys.stdout None; the flush that catches a closed pipe
    must not turn that into a traceback."""
    proc = subprocess.run(f"{EXE} devices >&-", shell=True, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
