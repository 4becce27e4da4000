"""A PNG grid of augmented MNIST digits: the originals, then one row per kind of augmentation.

    python scripts/augment_samples.py              # docs/augment.png
    python scripts/augment_samples.py out.png --count 12 --seed 3 --data-dir ~/mnist

Default strengths (gpumlp.training.augment.AugmentConfig); each row draws its own random transforms.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import gpumlp
from gpumlp.backends.cpu import CPU
from gpumlp.training.augment import AugmentConfig, Augmenter, parse_kinds

ROWS = ("none", "shift", "affine", "elastic", "affine,elastic")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="docs/augment.png", help="PNG to write (default docs/augment.png)")
    p.add_argument("--count", type=int, default=8, help="digits per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    a = p.parse_args()
    X = gpumlp.load_mnist(a.data_dir)[0][: a.count]  # (count, 784) host float32
    fig = Figure(figsize=(a.count * 1.1, len(ROWS) * 1.2), layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg, no display needed
    axes = fig.subplots(len(ROWS), a.count, squeeze=False)
    for r, spec in enumerate(ROWS):
        images = Augmenter(CPU, AugmentConfig(parse_kinds(spec)), a.seed)(X, 0, r)  # (count, 784)
        for c in range(a.count):
            ax = axes[r, c]
            ax.imshow(images[c].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel("original" if spec == "none" else spec.replace(",", "+"), fontsize=8)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=100)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
