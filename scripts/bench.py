"""Training speed of gpumlp over its benchmark matrix (gpumlp/cli/bench.py), optionally beside PyTorch.

    python scripts/bench.py                    # the table
    python scripts/bench.py --compare torch    # and PyTorch, row by row
    python scripts/bench.py --rows 1-5 --no-extras --json                      # the Rust rows only, as JSON
    python scripts/bench.py --background-load 0,1,2   # each row beside 0, 1, 2 busy processes

With ``--compare torch`` each configuration is also timed in PyTorch (scripts/bench_torch.py),
its runs alternating with gpumlp's (gpumlp, PyTorch, gpumlp, …, each timed run right after an
untimed one of the same framework) so both see the same load on a shared machine, and the ratio
of their median images/s is printed per row with its geometric mean over the Rust table's rows.

With ``--background-load N[,N…]`` each row is timed while N busy processes (started and stopped
here, see gpumlp/cli/bench_load.py) run beside it, as gpumlp chooses its BLAS threads and with one
thread, and its slowdown against the first load is printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import signal
import sys
from pathlib import Path

from gpumlp.backends import blas_threads
from gpumlp.cli.bench import CONFIGS, RUST_ROWS, format_bench, parse_rows, run_bench, table
from gpumlp.errors import ConfigError

TORCH_HINT = "pip install torch==2.13.0"
MKL_NOTE = (
    "note: gpumlp trained through Intel MKL here, whose OpenMP threads and PyTorch's share this process "
    "and take turns badly on few cores; for gpumlp/PyTorch ratios run with GPUMLP_BLAS=numpy "
    "(scripts/bench_blas.py compares the two BLAS)"
)


def parse_loads(spec: str) -> list[int]:
    """``"0,1,2"`` → [0, 1, 2]: numbers of busy background processes, 0 to 64."""
    try:
        loads = [int(part) for part in spec.split(",")]
    except ValueError:
        loads = []
    if not loads or not all(0 <= n <= 64 for n in loads):
        raise SystemExit(f"--background-load: a list of busy-process counts from 0 to 64, e.g. 0,1,2 (got {spec})")
    return loads


def under_load(a, configs) -> None:
    """--background-load: the rows beside each load; the busy processes die with this one (SIGTERM too)."""
    from gpumlp.cli.bench_load import format_under_load, run_under_load

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so background_load's cleanup runs
    result = run_under_load(parse_loads(a.background_load), configs, a.repeats, a.data_dir)
    print(json.dumps(result, indent=2) if a.json else format_under_load(result))


def load_torch_bench():
    """scripts/bench_torch.py as a module, or exit with the install hint when torch is missing."""
    if importlib.util.find_spec("torch") is None:
        raise SystemExit(f"--compare torch needs PyTorch, which is not installed: {TORCH_HINT}")
    spec = importlib.util.spec_from_file_location("bench_torch", Path(__file__).with_name("bench_torch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def comparison(result: dict, torch_result: dict, indices: list[int]) -> dict:
    """images/s of gpumlp ÷ PyTorch per row, and their geometric mean over the Rust rows present."""
    rows = [
        {"name": g["name"], "rust_row": i < RUST_ROWS,
         "ratio": g["images_per_s"] / t["images_per_s"] if t.get("images_per_s") else None}
        for i, g, t in zip(indices, result["rows"], torch_result["rows"])
    ]  # fmt: skip
    rust = [r["ratio"] for r in rows if r["rust_row"] and r["ratio"]]
    geomean = math.exp(sum(map(math.log, rust)) / len(rust)) if rust else None
    return {"rows": rows, "geomean_rust_rows": geomean, "n_rust_rows": len(rust)}


def format_comparison(result: dict, torch_result: dict, comp: dict) -> str:
    head = "# config batch gpumlp_images/s torch_images/s gpumlp/torch gpumlp_GFLOP/s torch_GFLOP/s".split()
    body = [
        [str(k), g["name"], str(g["batch_size"]), f"{g['images_per_s']:,.0f}",
         f"{t['images_per_s']:,.0f}" if t.get("images_per_s") else "n/a",
         f"{c['ratio']:.2f}×" if c["ratio"] else "n/a", f"{g['gflops']:.2f}",
         f"{t['gflops']:.2f}" if t.get("gflops") else "n/a"]
        for k, (g, t, c) in enumerate(zip(result["rows"], torch_result["rows"], comp["rows"]), 1)
    ]  # fmt: skip
    g = comp["geomean_rust_rows"]
    tail = "each row: gpumlp's and PyTorch's runs alternate, each timed run after an untimed one; ratio of medians\n"
    tail += f"geometric mean of gpumlp/PyTorch over the {comp['n_rust_rows']} Rust rows (batch 10): "
    return "\n".join(table(head, body) + [tail + (f"{g:.2f}×" if g else "n/a (none selected)")])


def write_json(path: str | None, result: dict) -> None:
    """The result as one JSON file at ``path`` (None: nothing), whatever else goes to stdout."""
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row after one warm-up (default: 5)")
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: $GPUMLP_DATA_DIR or the cache)")
    p.add_argument("--rows", default=None, help="rows to run, 1-based, e.g. 1-5 or 2,6 (default: all)")
    p.add_argument("--no-extras", action="store_true", help="skip peak memory, --help and load_mnist times")
    p.add_argument("--compare", choices=["torch"], help="also time each row in PyTorch and print the ratios")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--json-out", metavar="FILE", help="also write that JSON object to FILE (for scripts/gpu_check.py)")
    p.add_argument("--background-load", metavar="N[,N…]", help="time each row beside N busy processes, e.g. 0,1,2")
    p.add_argument("--cuda-graph", action="store_true", help="on CUDA, rows whose recipe allows it use --cuda-graph")
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error("--repeats must be at least 1")
    try:
        indices = parse_rows(a.rows, len(CONFIGS))
    except ConfigError as e:
        p.error(str(e))
    configs = [CONFIGS[i] for i in indices]
    if a.background_load is not None:
        if a.compare or a.device != "cpu":
            p.error("--background-load times the CPU alone: drop --compare and --device")
        return under_load(a, configs)
    beside, torch_result = None, None
    if a.compare == "torch":
        # gpumlp measures the machine's load once per process, when it first chooses its BLAS
        # threads: measure it now, before PyTorch runs. Its OpenMP workers keep spinning for a
        # while after each operation, and measured then they read as a core busy with another
        # program, so gpumlp would train every row on one thread beside PyTorch's two.
        blas_threads.auto_threads()
        bt = load_torch_bench()
        torch_device = bt.torch.device(a.device if a.device.startswith("cuda") else "cpu")
        data = bt.bench_data(a.data_dir, max(c.images for c in configs))
        torch_result = bt.start_result(torch_device, a.repeats, data[2])

        def beside(cfg):
            """PyTorch's run of the row, timed in alternation with gpumlp's (or recorded as skipped)."""
            work, n = bt.prepare_config(cfg, torch_device, data[0], data[1])
            if work is None:
                bt.add_row(torch_result, bt.row_result(cfg, n, None))
                return None
            done = lambda seconds: bt.add_row(torch_result, bt.row_result(cfg, n, seconds))  # noqa: E731
            return (lambda: bt.synchronize(torch_device)), work, done

    result = run_bench(a.device, a.repeats, configs, a.data_dir, extras=not a.no_extras, beside=beside,
                       cuda_graph=a.cuda_graph)  # fmt: skip
    if torch_result is None:
        write_json(a.json_out, result)
        print(json.dumps(result, indent=2) if a.json else format_bench(result))
        return
    comp = comparison(result, torch_result, indices)
    both = {"gpumlp": result, "torch": torch_result, "comparison": comp}
    write_json(a.json_out, both)
    if a.json:
        print(json.dumps(both, indent=2))
        return
    print(format_bench(result))
    print()
    print(bt.format_torch(torch_result))
    print()
    print(format_comparison(result, torch_result, comp))
    if "Intel MKL" in result["machine"].get("training_blas", ""):
        print(MKL_NOTE)


if __name__ == "__main__":
    sys.exit(main())
