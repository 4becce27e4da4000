"""Reproduce the five rows of the Rust MLP's README results table with gpumlp.

The Rust project trained sigmoid networks with the quadratic cost, batch 10, lr 3.0, on the first
N training images, and tested on the first 1000 test images. This script trains the same five
configurations (no validation set, so the timed part is training only), tests each on
``--test-size`` images and on the first 1000 of them (the Rust comparison), and prints the
accuracy, the training time, the throughput and the speed-up over the Rust times.

    python scripts/rust_rows.py --markdown
    python scripts/rust_rows.py --markdown --init normal

``--init normal`` draws weights and biases from N(0, 1) as the Rust project did; the default is
gpumlp's choice for sigmoid (Xavier/Glorot normal, zero biases).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time

import numpy as np

import gpumlp
from gpumlp.data.load import split
from gpumlp.model import INITS
from gpumlp.training.evaluation import evaluate
from gpumlp.training.loop import fit

RUST_TEST = 1000  # the Rust table tested on the first 1000 test images
BATCH, LR = 10, 3.0
# (layers, training images, epochs, Rust accuracy %, Rust training seconds), from the Rust README
RUST_ROWS = [
    ((784, 16, 16, 10), 10_000, 30, 91.9, 478),
    ((784, 16, 16, 10), 50_000, 3, 90.0, 232),
    ((784, 10), 50_000, 3, 73.3, 137),
    ((784, 100, 50, 10), 50_000, 1, 91.0, 503),
    ((784, 300, 100, 50, 10), 50_000, 1, 88.9, 1691),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--data-dir", default=None, help="MNIST directory (default: $GPUMLP_DATA_DIR or the cache)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order (default: 0)")
    p.add_argument("--init", default=None, choices=INITS, help="default: gpumlp's (xavier for sigmoid)")
    p.add_argument("--test-size", type=int, default=10_000, help="test images to score (default: 10000)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--markdown", action="store_true", help="print the results as a markdown table")
    args = p.parse_args(argv)
    if not 1 <= args.test_size <= 10_000:
        p.error(f"--test-size must be between 1 and 10000 (got {args.test_size})")
    return args


def run_row(args, data, sizes, n_train, epochs, rust_acc, rust_s) -> dict:
    (X_tr, y_tr), _, (X_te, y_te) = split(*data, n_train, 0, args.test_size)
    model = gpumlp.MLP(sizes, "sigmoid", "mse", args.init, args.seed, args.device)
    model.be.synchronize()
    t0 = time.perf_counter()
    fit(model, X_tr, y_tr, epochs=epochs, batch_size=BATCH, lr=LR, seed=args.seed)
    model.be.synchronize()
    seconds = time.perf_counter() - t0
    n_first = min(RUST_TEST, len(X_te))
    return {
        "layers": ",".join(map(str, sizes)),
        "train_images": n_train,
        "epochs": epochs,
        "init": model.init,
        "test_accuracy": evaluate(model, X_te, y_te),
        "test_size": len(X_te),
        "test_accuracy_first": evaluate(model, X_te[:n_first], y_te[:n_first]),
        "test_size_first": n_first,
        "seconds": seconds,
        "images_per_second": n_train * epochs / seconds,
        "rust_accuracy": rust_acc / 100,
        "rust_seconds": rust_s,
        "speedup": rust_s / seconds,
    }


def format_table(rows: list[dict], markdown: bool) -> str:
    n, k = rows[0]["test_size"], rows[0]["test_size_first"]
    head = ["layers", "train imgs", "epochs", f"acc ({n})", f"acc (first {k})", "Rust acc", "seconds", "imgs/s"]
    head += ["Rust s", "speed-up"]
    body = [
        [
            r["layers"], str(r["train_images"]), str(r["epochs"]),
            f"{100 * r['test_accuracy']:.2f}%", f"{100 * r['test_accuracy_first']:.1f}%",
            f"{100 * r['rust_accuracy']:.1f}%", f"{r['seconds']:.1f}", f"{r['images_per_second']:,.0f}",
            str(r["rust_seconds"]), f"{r['speedup']:.1f}×",
        ]
        for r in rows
    ]  # fmt: skip
    if markdown:
        lines = [head, ["---"] * len(head), *body]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [head, *body])


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    print("$", shlex.join([sys.executable, *sys.argv]))
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"numpy {np.__version__}, BLAS {blas.get('name', '?')} {blas.get('version', '')}, cpus {os.cpu_count()}")
    print(f"device {args.device}, seed {args.seed}, init {args.init or 'default'}, batch {BATCH}, lr {LR}")
    data = gpumlp.load_mnist(args.data_dir)
    rows = []
    for sizes, n_train, epochs, rust_acc, rust_s in RUST_ROWS:
        r = run_row(args, data, sizes, n_train, epochs, rust_acc, rust_s)
        rows.append(r)
        print(
            f"{r['layers']:>18} {n_train:>6} imgs × {epochs:>2} epochs: acc {100 * r['test_accuracy']:.2f}% "
            f"(first {r['test_size_first']}: {100 * r['test_accuracy_first']:.1f}%), {r['seconds']:.1f} s, "
            f"{r['images_per_second']:,.0f} imgs/s, {r['speedup']:.1f}× the Rust {rust_s} s",
            flush=True,
        )
    print()
    print(format_table(rows, args.markdown))
    total = time.perf_counter() - start
    print(f"\ntotal wall time {total:.1f} s")
    if args.json:
        meta = {"argv": sys.argv, "numpy": np.__version__, "blas": blas.get("name"), "cpus": os.cpu_count()}
        meta.update(vars(args), date=datetime.datetime.now().astimezone().isoformat(), total_seconds=total)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
