"""gpumlp's training speed through numpy's own BLAS and through Intel MKL, side by side.

    python scripts/bench_blas.py              # every row
    python scripts/bench_blas.py --rows 5-9

Needs ``pip install 'gpumlp[mkl]'``. Each row of ``gpumlp bench`` is trained by two models made in
this one process, one on a CPU backend owning numpy's BLAS (products through numpy.matmul), one on a
backend owning MKL (``NumpyBackend(library=Blas(...))``); their runs alternate
(``gpumlp.cli.bench.timed_pair``: numpy, MKL, numpy, …, each timed run right after an untimed one of the
same library, which also lets the other library's idle threads stop spinning) and the ratio of
median images/s is printed per row, MKL over numpy's. No PyTorch here: PyTorch's OpenMP threads and
MKL's, in one process, take turns badly.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys

import numpy as np
from bench import parse_rows  # scripts/bench.py, beside this file

from gpumlp.backends.blas import Blas
from gpumlp.backends.cpu import NumpyBackend
from gpumlp.cli.bench import CONFIGS, RUST_ROWS, bench_data, command_line, prepare_config, row_result, table, timed_pair
from gpumlp.errors import GpumlpError


def compare(indices: list[int], repeats: int = 5, data_dir=None) -> dict:
    """``{"command", "rows": [{name, batch_size, numpy, mkl, ratio}, …], "geomean_rust_rows"}``,
    images/s of each library per row; raises GpumlpError without MKL."""
    # Blas("mkl") fails with the install command when MKL is missing, before anything runs.
    backends = {library: NumpyBackend("cpu", np, library=Blas(library)) for library in ("numpy", "mkl")}
    configs = [CONFIGS[i] for i in indices]
    X, y, source = bench_data(data_dir, max(c.images for c in configs))
    rows = []
    for i, cfg in zip(indices, configs):
        work = {library: prepare_config(cfg, be, X, y) for library, be in backends.items()}  # (run, n) each
        n = work["numpy"][1]
        numpy_s, mkl_s = timed_pair(*((be.synchronize, work[library][0]) for library, be in backends.items()), repeats)
        speed = {lib: row_result(cfg, n, s)["images_per_s"] for lib, s in (("numpy", numpy_s), ("mkl", mkl_s))}
        rows.append(
            {"name": cfg.name, "batch_size": cfg.batch_size, "rust_row": i < RUST_ROWS, **speed,
             "ratio": statistics.median(numpy_s) / statistics.median(mkl_s)}
        )  # fmt: skip
    rust = [r["ratio"] for r in rows if r["rust_row"]]
    return {
        "command": command_line(),
        "data": source,
        "repeats": repeats,
        "rows": rows,
        "geomean_rust_rows": math.exp(sum(map(math.log, rust)) / len(rust)) if rust else None,
    }


def format_compare(result: dict) -> str:
    head = "# config batch numpy's_BLAS_images/s MKL_images/s MKL/numpy's".split()
    body = [
        [str(k), r["name"], str(r["batch_size"]), f"{r['numpy']:,.0f}", f"{r['mkl']:,.0f}", f"{r['ratio']:.2f}×"]
        for k, r in enumerate(result["rows"], 1)
    ]
    g = result["geomean_rust_rows"]
    return "\n".join(
        [f"$ {result['command']}", f"data {result['data']}", ""]
        + table(head, body)
        + [
            f"each row: the two libraries' runs alternate ({result['repeats']} timed each, each after an untimed "
            "one); ratio of medians",
            f"geometric mean of MKL/numpy's over the Rust rows (batch 10): {f'{g:.2f}×' if g else 'n/a'}",
        ]
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=None, help="rows to run, 1-based, e.g. 1-5 or 2,6 (default: all)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per library and row (default: 5)")
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: $GPUMLP_DATA_DIR or the cache)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error("--repeats must be at least 1")
    try:
        result = compare(parse_rows(a.rows), a.repeats, a.data_dir)
    except GpumlpError as e:  # no MKL: the install command
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(result, indent=2) if a.json else format_compare(result))


if __name__ == "__main__":
    sys.exit(main())
