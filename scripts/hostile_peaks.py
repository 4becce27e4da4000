"""Peak resident memory of gpumlp on each crafted file of the hostile corpus's memory cases.

    python scripts/hostile_peaks.py            # this checkout's gpumlp
    PYTHONPATH=/other/checkout python scripts/hostile_peaks.py --cap-gib 1   # another, capped

Each case of ``tests/test_hostile_files.py``'s ``MEMORY_CASES`` is built in a temporary folder and
its command run through ``python -m gpumlp`` in a fresh process with one BLAS thread; the process
reports its own ``VmHWM`` (peak resident set) from /proc at exit. Linux only. ``--cap-gib`` runs
under that ``RLIMIT_AS`` (use it for code without the checks: some cases ask for tens of GB).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_hostile_files as corpus  # noqa: E402  (the cases live with the tests)

REPORT = """import atexit, runpy, sys
def hwm():
    print([line for line in open("/proc/self/status") if line.startswith("VmHWM")][0], file=sys.stderr)
atexit.register(hwm)
sys.argv = ["gpumlp"] + sys.argv[1:]
runpy.run_module("gpumlp", run_name="__main__")
"""


def peak(args, cwd: Path, cap: int | None) -> tuple[int, int | None, str]:
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_DATA_DIR"}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", HOME=str(cwd / "home"))
    env.update(XDG_CACHE_HOME=str(cwd / "home" / "cache"))
    limit = (lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))) if cap else None
    proc = subprocess.run([sys.executable, "-c", REPORT, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, preexec_fn=limit, timeout=600)  # fmt: skip
    hwm = re.search(r"VmHWM:\s*(\d+) kB", proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("VmHWM")]
    return proc.returncode, int(hwm.group(1)) // 1024 if hwm else None, lines[-1][:100] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-gib", type=float, default=None, help="RLIMIT_AS for each run, GiB")
    cap = parser.parse_args().cap_gib
    for name, make in corpus.MEMORY_CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            args, *_ = make(folder)
            on_disk = sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())
            rc, mb, last = peak(args, folder, int(cap * 2**30) if cap else None)
            print(f"{name}: {on_disk / 1e6:.1f} MB on disk, `gpumlp {args[0]}`: exit {rc}, peak {mb} MB  {last}")


if __name__ == "__main__":
    main()
