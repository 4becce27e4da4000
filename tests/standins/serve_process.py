"""``gpumlp serve`` as a real process on a free port, for the tests that talk to it over HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"


# Preludes: Python run in the server's process before gpumlp's entry point.
# Its socket listens on 127.0.0.1 whatever --host says: everything else (the warning, the
# addresses printed, the Host names answered) is decided from --host as ever.
LOOPBACK_ONLY = """
from gpumlp.cli import serve
real = serve.listen
serve.listen = lambda host, port: real("127.0.0.1", port)
"""
# As on Windows: no fcntl and no resource module (an import of either raises ImportError).
WITHOUT_UNIX_MODULES = """
import sys
sys.modules.update(fcntl=None, resource=None)
"""


@contextlib.contextmanager
def running_server(checkpoint=CHECKPOINT, *args, open_files: int | None = None, prelude: str = ""):
    """`gpumlp serve CHECKPOINT --port 0 ARGS` in a subprocess; yields (process, base URL).
    ``proc.startup`` holds the stderr lines up to the address; ``open_files`` sets its RLIMIT_NOFILE;
    ``prelude``: Python to run in the process first (``LOOPBACK_ONLY``, ``WITHOUT_UNIX_MODULES``)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    limit = None if open_files is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files,) * 2)
    program = ["-c", f"{prelude}\nfrom gpumlp.cli.commands import main\nmain()"] if prelude else ["-m", "gpumlp"]
    proc = subprocess.Popen(
        [sys.executable, *program, "serve", str(checkpoint), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=limit,
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
    """Read stderr up to the address line (from a thread: a line buffered by an earlier readline
    would not wake select)."""
    seen, found = [], []

    def read():
        for line in iter(proc.stderr.readline, ""):
            seen.append(line)
            match = re.search(r"at (http://\S+/) \(Ctrl-C stops\)", line)
            if match:
                found.append(match.group(1))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    proc.startup = "".join(seen)
    if not found:
        raise AssertionError(f"gpumlp serve did not start: {proc.startup}")
    return found[0]
