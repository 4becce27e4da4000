"""Where a training step's BLAS time goes: the matrix products of one step of each benchmark row,
each timed alone, as gpumlp calls numpy's BLAS and, beside it, as PyTorch's ``torch.mm`` (MKL on
its CPU wheels) computes the same product.

    python scripts/products.py                  # every row of gpumlp.cli.bench.CONFIGS
    python scripts/products.py --rows 5,8       # rows numbered as `gpumlp bench` numbers them
    python scripts/products.py --no-torch       # numpy only

Per layer (a inputs, b outputs, batch n): the forward product A·W (n×a×b); the input gradient
dZ·Wᵀ (n×b×a; none for the first layer); the weight gradient Aᵀ·dZ (a×n×b), which gpumlp folds
into SGD's step (W ← W − η·Aᵀ·dZ, one gemm with β = 1) for the layers its optimiser fuses, and
PyTorch computes as dZᵀ·A into a fresh gradient. PyTorch's layout is its own (``nn.Linear`` keeps
W as (b, a)). Each product: median of 7 timings of a loop of ~20 ms, operands warm in cache, so
these are floors (in a real step other work evicts them); the two libraries take turns row by row
(``--rounds``) and each product's median over the turns is shown. Reading the sum of a
row against its measured step time (``gpumlp bench``) says how much of the step is BLAS, and the
PyTorch column says what a faster BLAS would give (numpy÷torch time above 1: PyTorch's product is
faster). Needs PyTorch only for that column.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import numpy as np
from bench import parse_rows  # scripts/bench.py, beside this file

from gpumlp.backends.blas import Blas
from gpumlp.backends.blas_threads import largest_product, training_threads
from gpumlp.backends.blas_threads import threads as blas_threads
from gpumlp.backends.cpu import NumpyBackend
from gpumlp.cli.bench import CONFIGS
from gpumlp.model import MLP
from gpumlp.optim import make_optimizer

# The numpy column is numpy's own BLAS, also where Intel MKL is installed.
CPU = NumpyBackend("cpu", np, library=Blas("numpy"))


def per_call(fn, target_s: float = 0.02) -> float:
    """Seconds per call of ``fn``: median of 7 loops of ~``target_s`` each, after a warm-up."""
    fn()
    t0 = time.perf_counter()
    fn()
    calls = max(3, int(target_s / max(time.perf_counter() - t0, 1e-7)))
    loops = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        loops.append((time.perf_counter() - t0) / calls)
    return statistics.median(loops)


def step_products(cfg) -> list[tuple[str, int, int, int, bool]]:
    """``[(name, m, k, n, fused), …]``: the products of one training step of ``cfg``, in order."""
    model = MLP(cfg.sizes, cfg.activation, cfg.loss, device=CPU)
    recipe = dict(cfg.recipe)
    fused = make_optimizer(recipe.get("optimizer", "sgd"), model, fuse=True).fused
    n, layers = cfg.batch_size, list(zip(cfg.sizes[:-1], cfg.sizes[1:]))
    out = [(f"forward A{l}·W{l}", n, a, b, False) for l, (a, b) in enumerate(layers)]
    for l in reversed(range(len(layers))):
        a, b = layers[l]
        if l > 0:
            out.append((f"dA{l} = dZ·W{l}ᵀ", n, b, a, False))
        out.append((f"A{l}ᵀ·dZ" + (" into W (SGD step)" if l in fused else ""), a, n, b, l in fused))
    return out


def numpy_seconds(name: str, m: int, k: int, n: int, fused: bool, rng) -> float:
    """One product as gpumlp's backward and forward call it (float32, its layouts; a layer's forward
    and input gradient through ``layer_matmul_function`` and ``input_grad_function``, in pieces where
    training cuts them so)."""
    if name.startswith("forward"):
        A, W = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
        mm = CPU.layer_matmul_function(k, n)
        return per_call(lambda: mm(A, W))
    if name.startswith("dA"):
        dZ, W = rng.random((m, k), np.float32), rng.random((n, k), np.float32)  # W (a, b) as gpumlp stores it
        dA = CPU.input_grad_function(n, k)  # dZ·Wᵀ, in row pieces of W where training cuts it so
        return per_call(lambda: dA(dZ, W))
    A, dZ, W = rng.random((k, m), np.float32), rng.random((k, n), np.float32), rng.random((m, n), np.float32)
    if fused:
        return per_call(lambda: CPU.gemm(A.T, dZ, W, -1e-6, 1.0))
    return per_call(lambda: np.matmul(A.T, dZ, out=W))


def torch_seconds(torch, name: str, m: int, k: int, n: int) -> float:
    """The same product as PyTorch's autograd computes it for ``nn.Linear`` (weight (out, in))."""
    if name.startswith("forward"):
        A, Wt = torch.rand(m, k), torch.rand(n, k)
        return per_call(lambda: torch.mm(A, Wt.t()))
    if name.startswith("dA"):
        dZ, Wt = torch.rand(m, k), torch.rand(k, n)  # weight (b, a) = (k, n): dA = dZ·W, no transpose
        return per_call(lambda: torch.mm(dZ, Wt))
    A, dZ = torch.rand(k, m), torch.rand(k, n)
    return per_call(lambda: torch.mm(dZ.t(), A))  # grad of weight (b, a) = dZᵀ·A


def report(rows: list[int], with_torch: bool, rounds: int = 3) -> str:
    torch = None
    if with_torch and importlib.util.find_spec("torch") is not None:
        import torch
    rng = np.random.default_rng(0)
    products = {r: step_products(CONFIGS[r - 1]) for r in rows}
    # The two libraries take turns, row by row, `rounds` times, half a second apart, and each
    # product's median counts: each library's idle worker threads spin for a while after a call
    # (OpenBLAS's up to ~0.1 s) and take a core from the other's next product (alternating product
    # by product measured PyTorch 2-4× slower than alone), and a shared machine's speed drifts
    # over tens of seconds, which one pass of each after the other would read as a difference.
    numpy_s = {r: [[] for _ in products[r]] for r in rows}
    torch_s = {r: [[] for _ in products[r]] for r in rows}
    # Each row's numpy products run on the BLAS threads its training would (fit's rule: one for a
    # row of small products), as `gpumlp bench` runs it.
    largest = {r: largest_product(CONFIGS[r - 1].sizes, CONFIGS[r - 1].batch_size) for r in rows}
    threads = {r: training_threads(None, largest[r])[0] for r in rows}
    for _ in range(rounds):
        for r in rows:
            with blas_threads(threads[r], CPU.blas.name):
                for k, p in enumerate(products[r]):
                    numpy_s[r][k].append(numpy_seconds(*p, rng))
            if torch is not None:
                time.sleep(0.5)
                for k, p in enumerate(products[r]):
                    torch_s[r][k].append(torch_seconds(torch, *p[:4]))
                time.sleep(0.5)
    numpy_s = {r: [statistics.median(v) for v in numpy_s[r]] for r in rows}
    torch_s = {r: [statistics.median(v) for v in torch_s[r]] for r in rows} if torch is not None else {}
    built = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    lines = [f"numpy {np.__version__}, BLAS {built['name']} {built.get('version', '')}"]
    if torch is not None:
        lines[0] += (
            f"; PyTorch {torch.__version__}, {torch.get_num_threads()} threads, MKL {torch.backends.mkl.is_available()}"
        )
    head = f"   {'product':30} {'m×k×n':>16} {'numpy µs':>9} {'GFLOP/s':>8}"
    head += "  torch µs  GFLOP/s  numpy÷torch time" if torch else ""
    for r in rows:
        cfg = CONFIGS[r - 1]
        lines += ["", f"{r}  {cfg.name}, batch {cfg.batch_size}, {threads[r] or 'default'} numpy BLAS thread(s)", head]
        for k, (name, m, kk, n, _) in enumerate(products[r]):
            flop, s = 2 * m * kk * n, numpy_s[r][k]
            line = f"   {name:30} {f'{m}×{kk}×{n}':>16} {s * 1e6:9.1f} {flop / s / 1e9:8.1f}"
            if torch is not None:
                t = torch_s[r][k]
                line += f" {t * 1e6:9.1f} {flop / t / 1e9:8.1f} {s / t:17.2f}"
            lines.append(line)
        total = f"   {'all products of one step':30} {'':>16} {sum(numpy_s[r]) * 1e6:9.1f}"
        if torch is not None:
            total += f" {'':8} {sum(torch_s[r]) * 1e6:9.1f} {'':8} {sum(numpy_s[r]) / sum(torch_s[r]):17.2f}"
        lines.append(total)
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", default=None, help="rows to time, 1-based, e.g. 1-5 or 5,8 (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="turns each library takes per row (median counts)")
    p.add_argument("--no-torch", action="store_true", help="numpy only, even where PyTorch is installed")
    a = p.parse_args(argv)
    print(report([i + 1 for i in parse_rows(a.rows)], not a.no_torch, max(1, a.rounds)))


if __name__ == "__main__":
    main()
