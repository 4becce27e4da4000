"""How often networks say "not sure": on the MNIST test digits and on 60 generated non-digits.

    python scripts/not_sure_rates.py                 # the two shipped networks
    python scripts/not_sure_rates.py CKPT [CKPT ...] --data-dir DIR

For each network, at the floor its file holds (``confidence_floor``, or the 50% default for a file
without one) and at the 50% default, the markdown row of docs/deploy.md's table: the floor, how many
of the 10,000 MNIST test digits are "not sure", and how many of the non-digits
(``tests/standins/nondigits.py``: 20 letters, 20 shapes, 20 pairs of MNIST digits side by side) are.
Needs Pillow and fonts, as the tests do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import gpumlp  # noqa: E402
from gpumlp.cli.predict import predict_images  # noqa: E402
from gpumlp.formats.metadata import confidence_floor  # noqa: E402
from gpumlp.losses import DEFAULT_FLOOR  # noqa: E402
from standins.nondigits import nondigit_set  # noqa: E402  (the drawings live with the tests)

SHIPPED = [
    ROOT / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz",
    ROOT / "checkpoints" / "gpumlp-best-784-800-800-10.npz",
]
KINDS = ("letter", "shape", "two digits")


def row(model, name: str, floor: float, X, others, images) -> str:
    alarms = sum(not r["confident"] for r in predict_images(model, list(X), floor=floor))
    unsure = [not r["confident"] for r in predict_images(model, images, floor=floor)]
    by_kind = [sum(u for u, (_, kind) in zip(unsure, others) if kind == k) for k in KINDS]
    return (
        f"| {name} | {100 * floor:.1f}% | {alarms} of {len(X):,} ({100 * alarms / len(X):.2f}%) "
        f"| {sum(unsure)} of {len(unsure)}: {', '.join(map(str, by_kind))} |"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="*", type=Path, default=SHIPPED)
    p.add_argument("--data-dir", default=None, help="folder with the MNIST files (as gpumlp's --data-dir)")
    args = p.parse_args(argv)
    _, _, X, y = gpumlp.load_mnist(args.data_dir)
    others = nondigit_set(X, y)
    images = [gpumlp.load_digit(data) for data, _ in others]
    print('| network | floor | MNIST test digits "not sure" | non-digits "not sure": letters, shapes, pairs |')
    print("| --- | --- | --- | --- |")
    for path in args.checkpoints:
        model, meta = gpumlp.load(path)
        own = "its own floor" if "confidence_floor" in meta else "no floor of its own"
        print(row(model, f"{path.name}, {own}", confidence_floor(meta), X, others, images))
        print(row(model, f"{path.name}, the 50% default", DEFAULT_FLOOR, X, others, images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
