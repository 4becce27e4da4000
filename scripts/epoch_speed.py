"""Images/s of one training epoch of a network on real MNIST, epoch by epoch, and their median.

    python scripts/epoch_speed.py            # reference network
    python scripts/epoch_speed.py --layers 784,100,10 --batch-size 128 --epochs 5 --device cuda

Training only (no validation); each epoch is timed with the device synchronised (see fit).
"""

from __future__ import annotations

import argparse
import statistics

import gpumlp
from gpumlp.data.load import split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="784,16,16,10")
    p.add_argument("--activation", default="sigmoid")
    p.add_argument("--loss", default="mse")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--lr", type=float, default=3.0)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-size", type=int, default=50_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None)
    a = p.parse_args()
    (X, y), _, _ = split(*gpumlp.load_mnist(a.data_dir), a.train_size, 0, 0)
    model = gpumlp.MLP(a.layers, a.activation, a.loss, device=a.device)
    history = gpumlp.fit(model, X, y, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=0)
    rates = [len(X) / e.seconds for e in history]
    print(f"{model}, batch {a.batch_size}, {len(X)} images per epoch")
    print("images/s per epoch:", " ".join(f"{r:,.0f}" for r in rates))
    print(f"median {statistics.median(rates):,.0f} images/s, {len(X) / statistics.median(rates):.3f} s per epoch")


if __name__ == "__main__":
    main()
