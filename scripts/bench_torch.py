"""The configurations of ``gpumlp.cli.bench`` trained with PyTorch, timed the same way, for comparison.

    python scripts/bench_torch.py            # CPU, and CUDA when present
    python scripts/bench_torch.py --device cpu --json

Same architectures, losses (½‖σ(z) − y‖² per image for mse, softmax cross-entropy for ce, both
batch means), plain SGD, batch sizes, images and epochs as gpumlp's rows, in an idiomatic PyTorch
loop: ``nn.Sequential`` of ``nn.Linear`` and activations, ``loss.backward()``, ``optimizer.step()``,
``zero_grad(set_to_none=True)``. The training set is put on the device once and each epoch's
batches are gathered from a ``torch.randperm`` permutation, like gpumlp (no DataLoader, whose
per-batch collation would dominate at batch 10). The loss is summed on the device. Timed as
gpumlp's rows are: the epochs' training steps (each epoch's permutation included), after one
untimed run of the same, synchronised before the clock starts and at the end, nothing read back
in between; the network, optimiser and data are made once before. ``torch.set_num_threads`` is
left at its default (reported). Same repeats and median. A row whose loss or update rule is
not written here (``TORCH_LOSSES``, ``TORCH_RULES``) is skipped, saying so. Needs ``pip install torch``;
gpumlp itself never imports torch.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    import torch
    from torch import nn
except ImportError:  # the comparison's own dependency, never gpumlp's: one line and exit 2, not a traceback
    print("error: scripts/bench_torch.py needs PyTorch, not installed: pip install torch==2.13.0", file=sys.stderr)
    sys.exit(2)

from gpumlp.cli.bench import (
    CONFIGS,
    EPOCH_IMAGES,
    BenchConfig,
    bench_data,
    efficiency,
    flops_per_image,
    parse_rows,
    steps_timed,
)
from gpumlp.errors import ConfigError


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``work`` after one warm-up, synchronised before each clock read."""
    work()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        work()
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return seconds


def sgemm_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of an (n, n) @ (n, n) float32 ``torch.matmul`` (PyTorch's own BLAS / cuBLAS)."""
    A, B = (torch.randn(n, n, device=device) for _ in range(2))
    single = min(timed(device, lambda: A @ B, 1))
    calls = max(1, int(0.05 / max(single, 1e-9)))

    def work():
        for _ in range(calls):
            A @ B

    return 2 * n**3 * calls / statistics.median(timed(device, work, repeats)) / 1e9


def half_sse_mean(A: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """gpumlp's mse: ½‖a − y‖² per image, averaged over the batch (nn.MSELoss would also divide by 10)."""
    return 0.5 * nn.functional.mse_loss(A, Y, reduction="sum") / A.shape[0]


# gpumlp's losses written in PyTorch: the output layer after the last Linear (None: none), the
# targets (n, …) from the labels (n,) and k classes, and the batch-mean loss. A loss gpumlp has
# but this table has not is refused (``skipped``), never timed as another.
TORCH_LOSSES = {
    "mse": (nn.Sigmoid, lambda labels, k: nn.functional.one_hot(labels, k).float(), half_sse_mean),  # ½‖σ(z) − y‖²
    "ce": (None, lambda labels, k: labels, nn.CrossEntropyLoss()),  # softmax and cross-entropy in one
}
TORCH_RULES = ("sgd", "momentum", "nesterov", "adam")  # the update rules ``optimizer`` builds


def network(cfg: BenchConfig) -> nn.Sequential:
    """Linear layers with the hidden activation between them, then the loss's output layer
    (``TORCH_LOSSES``: a Sigmoid for mse; ce's softmax lives in the loss)."""
    act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}[cfg.activation]
    dropout = dict(cfg.recipe).get("dropout", 0.0)
    layers = []
    for l, (n_in, n_out) in enumerate(zip(cfg.sizes[:-1], cfg.sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if l < len(cfg.sizes) - 2:
            layers.append(act())
            if dropout:
                layers.append(nn.Dropout(dropout))
    output = TORCH_LOSSES[cfg.loss][0]
    if output is not None:
        layers.append(output())
    return nn.Sequential(*layers)


def optimizer(cfg: BenchConfig, net: nn.Module) -> torch.optim.Optimizer:
    """The row's update rule in torch.optim (weight decay there also reaches the biases: the same cost)."""
    r = dict(cfg.recipe)
    name, wd = r.get("optimizer", "sgd"), r.get("weight_decay", 0.0)
    if name == "adam":
        return torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(r.get("beta1", 0.9), r.get("beta2", 0.999)),
                                eps=r.get("eps", 1e-8), weight_decay=wd)  # fmt: skip
    momentum = r.get("momentum", 0.9) if name in ("momentum", "nesterov") else 0.0
    return torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=wd)


def prepare_config(cfg: BenchConfig, device: torch.device, X: np.ndarray, y: np.ndarray):
    """``(work, n)`` as ``gpumlp.cli.bench.prepare_config``: ``cfg.epochs`` epochs over the first n images;
    or ``(None, n)`` for a configuration PyTorch alone cannot run (see ``skipped``)."""
    n = min(cfg.images, len(X)) // cfg.batch_size * cfg.batch_size
    recipe = dict(cfg.recipe)
    if skipped(cfg):
        return None, n
    torch.manual_seed(0)
    net = network(cfg).to(device)
    opt = optimizer(cfg, net)
    max_norm = recipe.get("max_norm", 0.0)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    X_dev = torch.from_numpy(np.ascontiguousarray(X[:n], dtype=np.float32)).to(device)  # (n, 784), once
    labels = torch.from_numpy(y[:n].astype(np.int64)).to(device)  # (n,)
    _, make_targets, loss_fn = TORCH_LOSSES[cfg.loss]
    targets = make_targets(labels, cfg.sizes[-1])  # (n, 10) one-hot for mse, (n,) labels for ce

    total = torch.zeros((), device=device)  # the summed loss, on the device, as gpumlp's loss vector

    def work():  # no sync and no read-back: the timer synchronises at the end, as gpumlp's rows
        total.zero_()
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, device=device)
            for start in range(0, n, cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                loss = loss_fn(net(X_dev[idx]), targets[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if max_norm:  # each unit's incoming weights: a row of nn.Linear's (out, in) weight
                    with torch.no_grad():
                        for lin in linears:
                            lin.weight.copy_(torch.renorm(lin.weight, 2, 0, max_norm))
                total.add_(loss.detach())

    return work, n


def skipped(cfg: BenchConfig) -> str | None:
    """Why PyTorch alone, as written here, cannot run ``cfg``, or None."""
    recipe = dict(cfg.recipe)
    if cfg.loss not in TORCH_LOSSES:  # e.g. one registered after import: never time another in its place
        return f"loss {cfg.loss!r}: not written in PyTorch here (only {', '.join(TORCH_LOSSES)})"
    if recipe.get("optimizer", "sgd") not in TORCH_RULES:
        return f"update rule {recipe['optimizer']!r}: not written in PyTorch here (only {', '.join(TORCH_RULES)})"
    if recipe.get("augment", "none") != "none":  # no PyTorch equivalent without torchvision
        return "augmentation: no equivalent in PyTorch alone"
    return None


def row_result(cfg: BenchConfig, n: int, seconds: list[float] | None) -> dict:
    """One row from the timings of ``cfg.epochs`` epochs over n images (None: skipped)."""
    row = {"name": cfg.name, "batch_size": cfg.batch_size, "images": n, "epochs": cfg.epochs,
           "steps": steps_timed(cfg, n)}  # fmt: skip
    if seconds is None:
        return {**row, "images_per_s": None, "skipped": skipped(cfg)}
    timed_images, median = n * cfg.epochs, statistics.median(seconds)
    return {
        **row,
        "seconds": seconds,
        "seconds_median": median,
        "images_per_s": timed_images / median,
        "images_per_s_range": [timed_images / max(seconds), timed_images / min(seconds)],
        "s_per_epoch": EPOCH_IMAGES * median / timed_images,
        "gflops": timed_images * flops_per_image(cfg.sizes) / median / 1e9,
    }


def time_config(cfg: BenchConfig, device: torch.device, X: np.ndarray, y: np.ndarray, repeats: int) -> dict:
    """One row, as a row of ``gpumlp.cli.bench.run_bench``, timed on its own (after one warm-up)."""
    work, n = prepare_config(cfg, device, X, y)
    return row_result(cfg, n, None if work is None else timed(device, work, repeats))


def torch_info(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),  # the default: never set here
        "interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_torch_bench(device="cpu", repeats: int = 5, configs=None, data_dir=None, data=None) -> dict:
    """The matrix on one torch device, as one JSON-ready dict (``data``: ``bench_data``'s result, to share)."""
    device = torch.device(device)
    configs = CONFIGS if configs is None else tuple(configs)
    X, y, source = data if data is not None else bench_data(data_dir, max(c.images for c in configs))
    result = start_result(device, repeats, source)
    for cfg in configs:
        add_row(result, time_config(cfg, device, X, y, repeats))
    return result


def start_result(device: torch.device, repeats: int, source: str, sgemm_n: int = 2048) -> dict:
    """A result without rows: the header and torch's own sgemm rate."""
    sgemm = sgemm_gflops(device, sgemm_n, repeats)
    return {"info": torch_info(device), "data": source, "repeats": repeats, "sgemm": {"n": sgemm_n, "gflops": sgemm}}


def add_row(result: dict, row: dict) -> dict:
    if row.get("gflops") is not None:
        row["efficiency"] = efficiency(row["gflops"], result["sgemm"]["gflops"])  # against torch's own sgemm
    result.setdefault("rows", []).append(row)
    return row


def format_torch(result: dict) -> str:
    i, s = result["info"], result["sgemm"]
    lines = [
        f"PyTorch {i['torch']} on {i['device']}{' (' + i['gpu'] + ')' if 'gpu' in i else ''}: "
        f"{i['threads']} threads (default), MKL {i['mkl']}, oneDNN {i['mkldnn']}; data {result['data']}",
        f"torch sgemm {s['n']}×{s['n']} float32: {s['gflops']:.1f} GFLOP/s",
        f"{'#':>2}  {'config':<26}{'batch':>6}{'steps':>7}{'s':>8}{'images/s':>11}{'(min–max)':>20}{'s/epoch':>9}"
        f"{'GFLOP/s':>9}{'eff.':>7}",
    ]
    for k, r in enumerate(result["rows"], 1):
        if r.get("images_per_s") is None:
            lines.append(f"{k:>2}  {r['name']:<26}{r['batch_size']:>6}  skipped: {r['skipped']}")
            continue
        lo, hi = r["images_per_s_range"]
        lines.append(
            f"{k:>2}  {r['name']:<26}{r['batch_size']:>6}{r['steps']:>7}{r['seconds_median']:>8.3f}"
            f"{r['images_per_s']:>11,.0f}{f'{lo:,.0f}–{hi:,.0f}':>20}"
            f"{r['s_per_epoch']:>9.3f}{r['gflops']:>9.2f}{100 * r['efficiency']:>6.1f}%"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu, then cuda when available)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--rows", default=None, help="rows to run, 1-based, e.g. 1-5 or 2,6 (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--json-out", metavar="FILE", help="also write that JSON object to FILE (for scripts/gpu_check.py)")
    a = p.parse_args(argv)
    try:
        configs = [CONFIGS[i] for i in parse_rows(a.rows, len(CONFIGS))]
    except ConfigError as e:
        p.error(str(e))
    devices = [a.device] if a.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    data = bench_data(a.data_dir, max(c.images for c in configs))
    results = [run_torch_bench(d, a.repeats, configs, data=data) for d in devices]
    command = shlex.join([sys.executable, *sys.argv])
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")
    if a.json:
        print(json.dumps({"command": command, "results": results}, indent=2))
    else:
        print(f"$ {command}")
        print("\n\n".join(format_torch(r) for r in results))


if __name__ == "__main__":
    main()
