"""Stop real `gpumlp train` processes at random moments, with SIGINT, SIGTERM, SIGHUP or a closed
stdout; checks what docs/reliability.md promises ("Every way a run ends").

    python scripts/sigint_probe.py --runs 120 --data-dir PATH

Each run trains a small network (4 epochs of 12,000 images, ~1 s of training on a 2-core VM) and is
stopped once, at a uniformly random moment between its start and its expected end (start-up, MNIST
loading, any epoch, the test pass, the save, the shutdown), by one of the four kinds in turn. A
signalled run prints its epochs as text; a closed-pipe run prints them as JSON (`--log-format
json`) into a pipe the probe reads until the moment comes, then closes, as `| head` does.

A run passes when it finished normally (exit 0, all 4 epochs and a test accuracy saved), or exited
with its kind's status (130 SIGINT, 143 SIGTERM, 129 SIGHUP, 141 closed pipe) with no traceback, a
last stderr line saying what was kept, a checkpoint holding at least every epoch it printed, and no
temporary or lock file left; or, when the signal came in the first milliseconds, before Python had
set its handler, was killed by it having written nothing. Prints one line per failure and the
counts per kind and outcome.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gpumlp.formats import checkpoint

KINDS = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129, "closed pipe": 141}
SAYS = {"SIGINT": "interrupted", "SIGTERM": "interrupted by SIGTERM", "SIGHUP": "interrupted by SIGHUP"}
SAYS["closed pipe"] = "output closed"


def probe(data_dir: str, kind: str, delay: float, folder: Path) -> tuple[str, str | None]:
    """``(outcome, failure or None)`` of one run stopped by ``kind`` ``delay`` seconds after it started."""
    ckpt = folder / "run.npz"
    exe = Path(sys.executable).parent / "gpumlp"
    args = [str(exe), "train", "--epochs", "4", "--train-size", "12000", "--val-size", "500", "--layers", "784,64,10"]
    args += ["--save", str(ckpt), *(["--log-format", "json"] if kind == "closed pipe" else ["-q"])]
    env = dict(os.environ, GPUMLP_DATA_DIR=data_dir)
    if kind == "closed pipe":
        rc, out, err = _close_stdout(args, env, delay)
    else:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(delay)
        proc.send_signal(getattr(signal, kind))
        out, err = proc.communicate(timeout=120)
        rc = proc.returncode
    printed = sum(line.startswith(("epoch ", '{"event": "epoch"')) for line in out.splitlines())
    saved = checkpoint.read_metadata(ckpt)["train_state"]["epochs_done"] if ckpt.exists() else 0
    return _judge(kind, rc, out, err, printed, saved, ckpt, folder)


def _close_stdout(args: list[str], env: dict, delay: float) -> tuple[int, str, str]:
    """Run ``args`` with stdout into a pipe read for ``delay`` seconds, then closed."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(args, stdout=write_end, stderr=subprocess.PIPE, text=True, env=env)
    os.close(write_end)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()))
    reader.start()
    out, deadline = b"", time.monotonic() + delay
    while (left := deadline - time.monotonic()) > 0:
        if select.select([read_end], [], [], left)[0]:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            out += chunk
    os.close(read_end)
    proc.wait(timeout=120)
    reader.join()
    return proc.returncode, out.decode(), err[0]


def _judge(kind, rc, out, err, printed, saved, ckpt, folder) -> tuple[str, str | None]:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    last = err.splitlines()[-1] if err.strip() else ""
    if rc == 0:
        ok = saved == 4 and checkpoint.read_metadata(ckpt)["test_accuracy"] is not None
        return "finished first", None if ok and not leftovers else f"exit 0 but saved {saved} epochs, left {leftovers}"
    if kind != "closed pipe" and rc == -getattr(signal, kind) and not err and not out and not any(folder.iterdir()):
        return "killed before gpumlp set its handlers", None  # nothing written
    if rc != KINDS[kind]:
        return "wrong exit", f"exit {rc}: {err[-300:]!r}"
    if "Traceback" in err or not last.startswith(SAYS[kind]):
        return "bad message", f"last line {last!r} (stderr {err[-300:]!r})"
    if saved < printed:
        return "lost epochs", f"printed {printed} epochs, saved {saved}"
    if leftovers:
        return "left files", f"left {leftovers}"
    return ("kept epochs" if saved else "stopped before epoch 1"), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=120)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--max-delay", type=float, default=1.8, help="seconds; about a whole run on a 2-core VM")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    rng = random.Random(a.seed)
    tally, failures = collections.Counter(), 0
    for i in range(a.runs):
        kind, delay = list(KINDS)[i % len(KINDS)], rng.uniform(0, a.max_delay)
        with tempfile.TemporaryDirectory() as folder:
            outcome, failure = probe(a.data_dir, kind, delay, Path(folder))
        tally[kind, outcome] += 1
        if failure:
            failures += 1
            print(f"run {i} ({kind} after {delay:.2f} s): {failure}", flush=True)
    for (kind, outcome), n in sorted(tally.items()):
        print(f"{n:4d}  {kind:<12} {outcome}")
    print(f"{a.runs} runs, {failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
