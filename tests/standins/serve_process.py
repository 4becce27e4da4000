"""``gpumlp serve`` as a real process on a free port, for the tests that talk to it over HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"


@contextlib.contextmanager
def running_server(checkpoint=CHECKPOINT, *args):
    """`gpumlp serve CHECKPOINT --port 0` in a subprocess; yields (process, base URL)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpumlp", "serve", str(checkpoint), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        url = _wait_for_url(proc)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_url(proc, timeout=60.0) -> str:
    deadline, seen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()
            seen += line
            match = re.search(r"at (http://\S+/) \(Ctrl-C stops\)", line)
            if match:
                return match.group(1)
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"gpumlp serve did not start: {seen}")
