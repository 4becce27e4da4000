"""Ctrl-C at random moments of real `gpumlp train` processes; checks what docs/reliability.md promises.

    python scripts/sigint_probe.py --runs 60 --data-dir PATH

Each run trains a small network (4 epochs of 12,000 images, ~1 s of training on a 2-core VM) and
gets one SIGINT at a uniformly random moment between its start and its expected end: start-up,
MNIST loading, any epoch, the test pass, the save or the shutdown. A run passes when it either
finished normally (exit 0, checkpoint with all epochs and a test accuracy), or exited 130 with
exactly one line on stderr, no traceback, a checkpoint holding at least every epoch it printed,
and no temporary or lock file left; or, when the signal came in the first milliseconds, before
Python had set its handler, was killed by it (the shell reports 130) having printed and written
nothing. Prints one line per failure and a tally by phase.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpumlp.formats import checkpoint


def probe(data_dir: str, delay: float, folder: Path) -> tuple[str, str | None]:
    """``(phase, failure or None)`` of one run interrupted ``delay`` seconds after it started."""
    ckpt = folder / "run.npz"
    exe = Path(sys.executable).parent / "gpumlp"
    args = [str(exe), "train", "--epochs", "4", "--train-size", "12000", "--val-size", "500", "--layers", "784,64,10"]
    env = dict(os.environ, GPUMLP_DATA_DIR=data_dir)
    proc = subprocess.Popen(
        [*args, "-q", "--save", str(ckpt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    printed = sum(line.startswith("epoch ") for line in out.splitlines())
    saved = checkpoint.read_metadata(ckpt)["train_state"]["epochs_done"] if ckpt.exists() else 0
    phase = _phase(proc.returncode, err, printed)
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    if proc.returncode == 0:
        ok = saved == 4 and checkpoint.read_metadata(ckpt)["test_accuracy"] is not None
        return phase, None if ok and not leftovers else f"exit 0 but saved {saved} epochs, left {leftovers}"
    if proc.returncode == -signal.SIGINT and not err and not out and not any(folder.iterdir()):
        return phase, None  # the signal came before Python set its handler: killed, nothing written
    if proc.returncode != 130:
        return phase, f"exit {proc.returncode}: {err!r}"
    if err.count("\n") != 1 or "Traceback" in err or not err.startswith("interrupted"):
        return phase, f"stderr not one line: {err!r}"
    if saved < printed:
        return phase, f"printed {printed} epochs, saved {saved}"
    if leftovers:
        return phase, f"left {leftovers}"
    return phase, None


def _phase(rc: int, err: str, printed: int) -> str:
    if rc == 0:
        return "after the work (finished)"
    if rc == -signal.SIGINT and not err:
        return "before Python set its SIGINT handler"
    if err == "interrupted\n":
        return "start-up: importing gpumlp"
    if "before training started" in err:
        return "start-up: options"
    if "before the first epoch" in err:
        return "loading MNIST or epoch 1"
    if "test pass" in err:
        return "test pass"
    if "tested and saved" in err:
        return "final save"
    return f"epochs (after {printed} printed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--max-delay", type=float, default=4.0, help="seconds; about a whole run")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    rng = random.Random(a.seed)
    tally, failures = collections.Counter(), 0
    for i in range(a.runs):
        delay = rng.uniform(0, a.max_delay)
        with tempfile.TemporaryDirectory() as folder:
            phase, failure = probe(a.data_dir, delay, Path(folder))
        tally[phase] += 1
        if failure:
            failures += 1
            print(f"run {i} (SIGINT after {delay:.2f} s, {phase}): {failure}")
    for phase, n in sorted(tally.items()):
        print(f"{n:4d}  {phase}")
    print(f"{a.runs} runs, {failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
