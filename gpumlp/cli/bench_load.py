"""Training speed on a busy machine: the benchmark's rows while N busy processes run beside them.

For each load N (``python scripts/bench.py --background-load 0,1,2``) this starts N processes that
spin in pure Python, lets gpumlp choose its BLAS threads as a run would (``blas_threads.auto_threads``,
measured afresh with the load running), and times every row twice in alternation: as chosen, and
with one BLAS thread (``GPUMLP_THREADS=1``), so both see the same load. Each row then gets its
images/s, its ratio to the one-thread run, and its slowdown against the first load (N = 0).

The busy processes are this process's children: killed when a load's rows are done, on Ctrl-C and
on any error, and each ends by itself after ``BUSY_LIMIT_S`` or as soon as its parent is gone.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
import time

from gpumlp.backends import blas_threads
from gpumlp.cli.bench import bench_data, command_line, prepare_config, run_bench, table

BUSY_LIMIT_S = 1800  # no busy process outlives this, whatever happens to the benchmark
# One busy process: a pure-Python spin, checking every ~50 ms whether its time is up or its parent gone.
_BUSY = """import os, sys, time
parent, end = os.getppid(), time.monotonic() + float(sys.argv[1])
while time.monotonic() < end and os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


@contextlib.contextmanager
def background_load(n: int, limit_s: float = BUSY_LIMIT_S, settle_s: float = 0.3):
    """Inside the block ``n`` processes keep one core busy each; they are killed on leaving it."""
    procs = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _BUSY, str(limit_s)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        if n:
            time.sleep(settle_s)  # they start (Python's start-up) and the scheduler sees them
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


@contextlib.contextmanager
def forced_threads(n: int):
    """``GPUMLP_THREADS=n`` inside the block (the user's way to choose), the earlier value after."""
    before = os.environ.get(blas_threads.THREADS_ENV)
    os.environ[blas_threads.THREADS_ENV] = str(n)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(blas_threads.THREADS_ENV, None)
        else:
            os.environ[blas_threads.THREADS_ENV] = before


def run_under_load(loads, configs, repeats: int = 3, data_dir=None, sgemm_n: int = 1024) -> dict:
    """For each load N in ``loads``: ``run_bench``'s rows of ``configs`` as gpumlp chooses threads,
    each beside the same row with one BLAS thread (alternating), plus the ratios. JSON-ready."""
    X, y, _ = bench_data(data_dir, max(c.images for c in configs))
    levels = []
    for n in loads:
        with background_load(n) as procs:
            chosen = (
                blas_threads.training_threads(None)
                if os.environ.get(blas_threads.THREADS_ENV)
                else blas_threads.auto_threads(True)
            )
            ones = []

            def one_thread(cfg, ones=ones):
                work, n_images = prepare_config(cfg, _cpu(), X, y)

                def work_one():
                    with forced_threads(1):
                        work()

                return (lambda: None), work_one, lambda s: ones.append((n_images * cfg.epochs, s))

            result = run_bench("cpu", repeats, configs, data_dir, extras=False, sgemm_n=sgemm_n, beside=one_thread)
            alive = sum(p.poll() is None for p in procs)
            for row, cfg in zip(result["rows"], configs):  # what each row trained with (fit's own rule)
                largest = blas_threads.largest_product(cfg.sizes, cfg.batch_size)
                row["threads"] = blas_threads.training_threads(None, largest)[0]
        for row, (timed_images, seconds) in zip(result["rows"], ones):
            row["one_thread_seconds"] = seconds
            row["one_thread_images_per_s"] = timed_images / sorted(seconds)[len(seconds) // 2]
            row["vs_one_thread"] = row["images_per_s"] / row["one_thread_images_per_s"]
        levels.append({"background": n, "busy_alive_at_end": alive, "threads": chosen[0], "why": chosen[1],
                       "machine": result["machine"], "rows": result["rows"]})  # fmt: skip
    base = levels[0]["rows"]
    for level in levels:
        for row, row0 in zip(level["rows"], base):
            row["slowdown"] = row0["images_per_s"] / row["images_per_s"]
    return {
        "command": command_line(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores_usable": len(blas_threads.usable_cpus()),
        "repeats": repeats,
        "baseline_load": loads[0],
        "loads": levels,
    }


def _cpu():
    from gpumlp.backends.cpu import CPU

    return CPU


def format_under_load(result: dict) -> str:
    """One line per load and row: images/s as chosen and with one thread, their ratio, the slowdown."""
    first = result["loads"][0]
    lines = [
        f"$ {result['command']}",
        f"date {result['date']}, {result['cores_usable']} usable cores, {first['machine']['cpu']}",
        f"numpy {first['machine']['numpy']}, BLAS {first['machine']['blas']}",
        f"each row: median of {result['repeats']} timed fit calls, alternating with the same row on one BLAS thread "
        f"(GPUMLP_THREADS=1); slowdown = images/s at load {result['baseline_load']} ÷ images/s at this load",
        "",
    ]
    head = "load config threads batch images/s 1-thread_images/s ÷1-thread slowdown".split()
    body = [
        [str(level["background"]), r["name"], str(r["threads"]), str(r["batch_size"]),
         f"{r['images_per_s']:,.0f}", f"{r['one_thread_images_per_s']:,.0f}", f"{r['vs_one_thread']:.2f}",
         f"{r['slowdown']:.2f}×"]
        for level in result["loads"]
        for r in level["rows"]
    ]  # fmt: skip
    lines += table(head, body)
    lines += [
        "",
        *(
            f"load {lv['background']}: {lv['threads']} BLAS thread{'s' if lv['threads'] != 1 else ''} ({lv['why']}; "
            "1 for a row whose products are all small)"
            for lv in result["loads"]
        ),
    ]
    return "\n".join(lines)
