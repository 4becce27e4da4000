"""Training speed: images/s, seconds per epoch and effective GFLOP/s over a matrix of networks,
against the machine's own float32 matrix-multiply rate.

Each configuration is timed as PyTorch's peer (scripts/bench_torch.py) times its loop: the training
steps of ``epochs`` epochs (one but for the first row) over the first ``images`` training images,
each epoch's permutation included, once as a warm-up and then ``repeats`` times; the median
counts. ``fit``'s preparation (checks, arrays on the device, one-hot labels, the optimiser, CuPy's
warm-up step) runs once before (``gpumlp.training.loop.prepare_steps``), and its end-of-epoch
read-back and validation are not timed. The device is synchronised before every clock read.
Effective FLOPs count the matrix products only: per image and layer (a inputs, b outputs) 2·a·b
forward and 4·a·b backward (dA and dW), except the first layer's backward, 2·a·b, whose gradient
w.r.t. the pixels is never computed. Nothing here imports PyTorch (see scripts/bench_torch.py).
"""

from __future__ import annotations

import datetime
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gpumlp.backends.base import Backend
from gpumlp.backends.registry import get_backend
from gpumlp.cli.bench_machine import ENV_SHOWN, machine_info, process_costs
from gpumlp.data import datasets
from gpumlp.data.load import load_dataset
from gpumlp.errors import ConfigError, DataError
from gpumlp.model import MLP
from gpumlp.training.loop import prepare_steps

EPOCH_IMAGES = 50_000  # s/epoch is reported for the Rust project's 50000-image epoch
RUST_ROWS = 5  # the first five configurations are the rows of the Rust README's results table


@dataclass(frozen=True)
class BenchConfig:
    name: str
    sizes: tuple[int, ...]
    activation: str
    loss: str
    lr: float
    batch_size: int
    images: int  # the training set: the first `images` training images
    epochs: int = 1  # fit epochs over them per timing
    recipe: tuple[tuple[str, object], ...] = ()  # fit's optimiser/regularisation/augmentation options


def _preset(name: str, images: int) -> BenchConfig:
    """A preset's network, batch size and recipe (its first epoch's learning rate; the schedule
    does not change the cost)."""
    from gpumlp.training.config import RECIPE
    from gpumlp.training.presets import preset_options

    o = preset_options(name)
    recipe = tuple((k, o[k]) for k in RECIPE if k in o)
    sizes = tuple(o["sizes"])
    label = f"preset {name} ({'-'.join(map(str, sizes))})"
    return BenchConfig(label, sizes, o["activation"], o["loss"], o["lr"], o["batch_size"], images, 1, recipe)


def _rust(name: str, sizes: tuple[int, ...], images: int = 20_000, epochs: int = 1) -> BenchConfig:
    return BenchConfig(name, sizes, "sigmoid", "mse", 3.0, 10, images, epochs)


# Sized so that one timing takes ~0.2-1 s on a 2-core CPU (the whole matrix, 6 timings a row, in
# ~20 s; PyTorch, at ~8× gpumlp's time per batch-10 step, in ~1.5 min).
CONFIGS = (
    _rust("784-16-16-10 (10000 imgs)", (784, 16, 16, 10), 10_000, 2),  # the Rust row's training set
    _rust("784-16-16-10", (784, 16, 16, 10)),
    _rust("784-10", (784, 10)),
    _rust("784-100-50-10", (784, 100, 50, 10)),
    _rust("784-300-100-50-10", (784, 300, 100, 50, 10), 10_000),
    BenchConfig("784-100-10", (784, 100, 10), "relu", "ce", 0.1, 128, 20_480),
    BenchConfig("784-800-10", (784, 800, 10), "relu", "ce", 0.1, 128, 10_240),
    BenchConfig("784-1024-1024-10", (784, 1024, 1024, 10), "relu", "ce", 0.1, 256, 5_120),
    # The presets of `gpumlp train --preset` (seed is the first Rust row), with their optimiser,
    # dropout, max-norm and augmentation.
    _preset("fast", 12_800),
    _preset("best", 2_560),
)


def parse_rows(spec: str | None, count: int = len(CONFIGS)) -> list[int]:
    """``"1-5,7"`` → [0, 1, 2, 3, 4, 6] (1-based, as the table numbers them) of ``count`` rows; None: every row."""
    if not spec:
        return list(range(count))
    rows = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            rows += range(int(lo) - 1, int(hi or lo))
    except ValueError:
        rows = [-1]  # not numbers: the same message
    if not rows or not all(0 <= i < count for i in rows):
        raise ConfigError(f"--rows: rows are 1 to {count} (got {spec})")
    return rows


def flops_per_image(sizes) -> int:
    """Matrix-product FLOPs of one training image: 6·a·b per layer, minus 2·a·b for the first
    layer (no gradient w.r.t. the input)."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return sum(6 * a * b for a, b in pairs) - 2 * pairs[0][0] * pairs[0][1]


def efficiency(gflops: float, sgemm: float | None) -> float | None:
    """Effective GFLOP/s as a fraction of the machine's sgemm GFLOP/s (None without an sgemm rate)."""
    return gflops / sgemm if sgemm else None


def timed(be: Backend, work: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``work`` after one warm-up, synchronised before each clock read."""
    work()  # warm-up: first-call allocations, BLAS thread start-up, CUDA kernel compilation
    seconds = []
    for _ in range(repeats):
        be.synchronize()
        t0 = time.perf_counter()
        work()
        be.synchronize()
        seconds.append(time.perf_counter() - t0)
    return seconds


def sgemm_gflops(be: Backend, n: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of an (n, n) @ (n, n) float32 product on ``be``, through the function training
    multiplies with (numpy's BLAS, or Intel MKL where installed; cuBLAS on CUDA)."""
    rng = np.random.default_rng(0)  # drawn on the host, moved once
    A = be.asarray(rng.standard_normal((n, n), dtype=np.float32))  # (n, n) on the device
    B = be.asarray(rng.standard_normal((n, n), dtype=np.float32))  # (n, n)
    matmul = be.matmul_function()
    single = min(timed(be, lambda: matmul(A, B), 1))
    calls = max(1, int(0.05 / max(single, 1e-9)))  # at least ~50 ms per timing: a GPU product takes < 1 ms

    def work():
        for _ in range(calls):
            matmul(A, B)

    return 2 * n**3 * calls / statistics.median(timed(be, work, repeats)) / 1e9


def bench_data(data_dir=None, n: int = 20_000, dataset: str = "mnist") -> tuple[np.ndarray, np.ndarray, str]:
    """Host training images (n, 784) float32 and labels (n,): the dataset's if found (never
    downloaded), else uniform random pixels and labels of the same shape; plus a line saying which."""
    rec = datasets.get(dataset)
    try:
        X, y, _, _ = load_dataset(rec, data_dir, download=False)
        return X[:n], y[:n], f"{rec.title} training images"
    except DataError as e:
        rng = np.random.default_rng(0)
        X, y = rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.uint8)
        return X, y, f"random pixels and labels ({rec.title} not found: {str(e).split(';')[0]})"


def timed_pair(a: tuple[Callable, Callable], b: tuple[Callable, Callable], repeats: int) -> tuple[list, list]:
    """Seconds of ``repeats`` calls each of two ``(synchronize, work)`` pairs in alternation, a, b,
    a, b, …, so that both see the same load on a shared machine. Each timed call follows an untimed
    one of the same work: the first run after the other framework's is slower (PyTorch's by 10–25%
    on the dev machine, with caches and allocator pools cold again), which is no one's real speed."""
    seconds = ([], [])
    for _ in range(repeats):
        for (sync, work), out in zip((a, b), seconds):
            work()  # warm-up, untimed
            sync()
            t0 = time.perf_counter()
            work()
            sync()
            out.append(time.perf_counter() - t0)
    return seconds


def graph_for(cfg: BenchConfig, be: Backend, cuda_graph: bool) -> bool:
    """Whether ``cfg`` trains with ``--cuda-graph`` when it is asked for: on a device that captures
    graphs, for a recipe the graph can replay (``gpumlp.backends.graph.refusal``)."""
    from gpumlp.backends.graph import refusal
    from gpumlp.optim import RULES
    from gpumlp.training.config import DEFAULT_RECIPE

    r = {**DEFAULT_RECIPE, **dict(cfg.recipe)}
    return cuda_graph and be.captures_graphs and refusal(r, RULES[r["optimizer"]]) is None


def prepare_config(cfg: BenchConfig, be: Backend, X, y, graph: bool = False, notes=None) -> tuple[Callable, int]:
    """``(work, n)``: ``work()`` trains ``cfg.epochs`` epochs' steps over the first n images (whole
    batches of the first ``cfg.images``) of the host arrays X (N, 784), y (N,), prepared here once
    (``prepare_steps``), no sync; with ``graph``, as ``--cuda-graph`` (its notes, a capture that
    failed, appended to ``notes``)."""
    n = min(cfg.images, len(X)) // cfg.batch_size * cfg.batch_size  # whole batches only
    model = MLP(cfg.sizes, cfg.activation, cfg.loss, seed=0, device=be)
    extra = {"cuda_graph": True, "log": (notes if notes is not None else []).append} if graph else {}
    work = prepare_steps(model, X[:n], y[:n], epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=0,
                         **dict(cfg.recipe), **extra)  # fmt: skip
    return work, n


def steps_timed(cfg: BenchConfig, n: int) -> int:
    """Training steps in one timing: ``cfg.epochs`` epochs of n images (whole batches)."""
    return cfg.epochs * (n // cfg.batch_size)


def row_result(cfg: BenchConfig, n: int, seconds: list[float]) -> dict:
    """One table row from the timings of ``cfg.epochs`` epochs over n images."""
    timed_images = n * cfg.epochs
    median = statistics.median(seconds)
    return {
        **asdict(cfg),
        "sizes": list(cfg.sizes),
        "recipe": dict(cfg.recipe),
        "images": n,
        "images_timed": timed_images,
        "steps": steps_timed(cfg, n),
        "seconds": seconds,
        "seconds_median": median,
        "images_per_s": timed_images / median,
        "images_per_s_range": [timed_images / max(seconds), timed_images / min(seconds)],
        "s_per_epoch": EPOCH_IMAGES * median / timed_images,
        "flops_per_image": flops_per_image(cfg.sizes),
        "gflops": timed_images * flops_per_image(cfg.sizes) / median / 1e9,
    }


def run_bench(
    device: str | Backend = "cpu",
    repeats: int = 5,
    configs=None,
    data_dir=None,
    extras: bool = True,
    sgemm_n: int = 2048,
    beside: Callable[[BenchConfig], tuple[Callable, Callable, Callable] | None] | None = None,
    dataset: str = "mnist",
    cuda_graph: bool = False,
) -> dict:
    """The whole benchmark as one JSON-ready dict. ``configs`` defaults to ``CONFIGS``; ``extras``
    adds ``process_costs``. ``beside(cfg)`` may return another framework's ``(synchronize, work,
    done)`` for the same configuration: its timings then alternate with gpumlp's (``timed_pair``)
    and ``done(seconds)`` receives its own; None skips it for that row. ``cuda_graph``: each row
    whose recipe a CUDA graph can replay trains with ``--cuda-graph`` (on CUDA; rows say which)."""
    configs = CONFIGS if configs is None else tuple(configs)
    be = get_backend(device)  # as MLP(device=…) resolves it, once for every row
    X, y, source = bench_data(data_dir, max(c.images for c in configs), dataset)
    sgemm = sgemm_gflops(be, sgemm_n, repeats)
    rows = []
    for cfg in configs:
        graph, notes = graph_for(cfg, be, cuda_graph), []
        work, n = prepare_config(cfg, be, X, y, graph, notes)
        other = beside(cfg) if beside is not None else None
        if other is None:
            seconds = timed(be, work, repeats)
        else:
            seconds, other_seconds = timed_pair((be.synchronize, work), other[:2], repeats)
            other[2](other_seconds)
        row = row_result(cfg, n, seconds)
        row["efficiency"] = efficiency(row["gflops"], sgemm)
        row["cuda_graph"], row["notes"] = graph, sorted(set(notes))  # notes: a capture that fell back
        rows.append(row)
    return {
        "command": command_line(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(be),
        "data": source,
        "repeats": repeats,
        "cuda_graph": cuda_graph,
        "graph_unavailable": getattr(be, "graph_unavailable", None),  # a CUDA device without direct cuBLAS
        "sgemm": {"n": sgemm_n, "gflops": sgemm},
        "rows": rows,
        "process": process_costs(data_dir, be.name if be.is_cuda else "cpu") if extras else None,
    }


def command_line() -> str:
    """This process's command as a shell line, with the environment that changes what it measures."""
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ENV_SHOWN if k in os.environ]
    python = [Path(sys.executable).name] if sys.argv[0].endswith(".py") else []
    return " ".join([*env, shlex.join([*python, *sys.argv])])


def format_bench(result: dict) -> str:
    """The readable report: a header of machine and method, one line per configuration."""
    m, s = result["machine"], result["sgemm"]
    lines = [
        f"$ {result['command']}",
        f"date {result['date']}, load average {' '.join(f'{x:.2f}' for x in m['loadavg'] or [])}",
        f"cpu {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), Python {m['python']}",
        f"numpy {m['numpy']}, BLAS {m['blas']} ({m['blas_config'] or '?'}), threads env {m['threads_env'] or 'unset'}",
        f"device {m['device']}" + (f" ({m['gpu']}, CuPy {m['cupy']})" if "gpu" in m else ""),
        *([f"training calls {m['training_blas']}"] if m.get("training_blas") else []),
        *(
            [f"BLAS threads {m['training_threads'][0]} ({m['training_threads'][1]})"]
            if m.get("training_threads")
            else []
        ),
        f"data {result['data']}",
        *([graph_line(result)] if result.get("cuda_graph") else []),
        f"sgemm {s['n']}×{s['n']} float32: {s['gflops']:.1f} GFLOP/s (median of {result['repeats']})",
        f"each row: median of {result['repeats']} timings (after 1 warm-up) of `steps` training steps, its "
        "`epochs` epochs over its first `images` training images, prepared once and synchronised at the end; "
        f"s: one timing; s/epoch for {EPOCH_IMAGES} images; efficiency = GFLOP/s ÷ sgemm's",
        "",
    ]
    head = "# config act/loss batch images×epochs steps s images/s (min–max) s/epoch GFLOP/s efficiency".split()
    body = [
        [
            str(i), r["name"], f"{r['activation']}/{r['loss']}", str(r["batch_size"]), f"{r['images']}×{r['epochs']}",
            str(r["steps"]), f"{r['seconds_median']:.3f}",
            f"{r['images_per_s']:,.0f}", "–".join(f"{v:,.0f}" for v in r["images_per_s_range"]),
            f"{r['s_per_epoch']:.3f}", f"{r['gflops']:.2f}",
            "n/a" if r["efficiency"] is None else f"{100 * r['efficiency']:.1f}%",
        ]
        for i, r in enumerate(result["rows"], 1)
    ]  # fmt: skip
    lines += table(head, body)
    p = result["process"]
    if p:
        load = "n/a (no MNIST)" if p["load_mnist_seconds"] is None else f"{p['load_mnist_seconds']:.3f} s"
        lines += [
            "",
            f"peak RSS {p['train_peak_rss_mib']:.0f} MiB: {p['train_command']} (fresh process, ru_maxrss)",
            f"{p['help_command']}: {p['help_seconds']:.3f} s (median of 5 fresh processes)",
            f"load_mnist(), decoded cache warm: {load} (median of 3 fresh processes, the call only)",
        ]
    return "\n".join(lines)


def graph_line(result: dict) -> str:
    """Which rows ``--cuda-graph`` trained with a CUDA graph, and any that fell back."""
    rows = result["rows"]
    used = [str(i) for i, r in enumerate(rows, 1) if r.get("cuda_graph")]
    if not used:
        why = result.get("graph_unavailable") or "CUDA graphs need --device cuda"
        return f"--cuda-graph: no row captured ({result['machine']['device']}: {why})"
    line = f"--cuda-graph: rows {', '.join(used)} trained with a CUDA graph (the others' recipes cannot be captured)"
    fell = [f"{i} ({'; '.join(r['notes'])})" for i, r in enumerate(rows, 1) if r.get("notes")]
    return line + (f"; fell back: {', '.join(fell)}" if fell else "")


def table(head: list[str], body: list[list[str]]) -> list[str]:
    """Right-aligned columns (the second, a name, left-aligned)."""
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    just = [str.rjust, str.ljust] + [str.rjust] * (len(head) - 2)
    return ["  ".join(j(c, w) for c, w, j in zip(row, widths, just)).rstrip() for row in [head, *body]]
