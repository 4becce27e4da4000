"""Two photo sets, handwritten and printed digits photographed on paper: a development set to tune
the preprocessing on and a test set that is never tuned on.

Each image is a page: MNIST test digits (handwriting) or DejaVu digits (printed: the fonts
matplotlib ships) in dark ink on grey paper, under light that falls off across the page, with the
camera's noise, blur, tilt and JPEG. Each style adds one thing a real photo has:

    handwritten   an MNIST digit, gradient of 20-60 grey levels, tilted up to 8°
    printed       a DejaVu digit (sans, serif, mono; regular, bold, oblique), the same camera
    shadow        either kind, half the page in a soft shadow 25-50% darker (a hand, a phone)
    edge          either kind, the paper ending near one side of the frame: a dark table along it
    specks        either kind, 3-8 specks of dust or dirt, 2-6 pixels across, anywhere on the page

    photo_set("dev") / photo_set("test")   [(JPEG bytes, label, style)], the same on every run
    python tests/standins/photo_sets.py CKPT [dev|test]   accuracy per style through load_digit

The test set's settings and seeds below were fixed and committed before any tuning on the
development set. Nothing is written to disk.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

SIDE = 200  # each photo is SIDE × SIDE pixels
STYLES = ("handwritten", "printed", "shadow", "edge", "specks")
# set → (seed, first MNIST test digit, photos per style). Test: fixed before tuning, never tuned on.
SETS = {"dev": (7, 5000, 40), "test": (2626, 1000, 50)}
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
)  # fmt: skip


def font_path(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


def handwritten_ink(digit28, rng: np.random.Generator) -> np.ndarray:
    """(784,) MNIST pixels → (SIDE, SIDE) ink coverage in [0, 1], the digit 110-160 px tall, off centre."""
    from PIL import Image

    size = int(rng.integers(110, 161))
    ink = Image.fromarray(np.uint8(np.clip(np.asarray(digit28).reshape(28, 28), 0, 1) * 255))
    ink = ink.resize((size, size), Image.BICUBIC)
    field = Image.new("L", (SIDE, SIDE), 0)
    room = (SIDE - size) // 2
    field.paste(ink, tuple(int(room + o) for o in rng.integers(-room // 2, room // 2 + 1, size=2)))
    return np.asarray(field, dtype=np.float64) / 255.0


def printed_ink(digit: int, rng: np.random.Generator) -> np.ndarray:
    """A digit in a DejaVu font → (SIDE, SIDE) ink coverage in [0, 1], 80-130 px tall, off centre."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path(FONTS[int(rng.integers(len(FONTS)))])), int(rng.integers(110, 180)))
    field = Image.new("L", (SIDE, SIDE), 0)
    centre = SIDE / 2 + rng.uniform(-20, 20, size=2)
    ImageDraw.Draw(field).text(tuple(centre), str(digit), fill=255, font=font, anchor="mm")
    return np.asarray(field, dtype=np.float64) / 255.0


def ramp(rng: np.random.Generator) -> np.ndarray:
    """(SIDE, SIDE) in [0, 1] along a random direction: 0 at one edge of the page, 1 at the other."""
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / (SIDE - 1) - 0.5
    r = xx * np.cos(theta) + yy * np.sin(theta)
    return (r - r.min()) / (r.max() - r.min())


def page(ink: np.ndarray, style: str, rng: np.random.Generator) -> bytes:
    """Ink coverage (SIDE, SIDE) → JPEG bytes of its photo, with ``style``'s extra (see the module)."""
    from PIL import Image, ImageFilter

    coverage = np.asarray(Image.fromarray(np.uint8(ink * 255)).rotate(rng.uniform(-8, 8), Image.BICUBIC)) / 255.0
    paper, pen = rng.uniform(150, 210), rng.uniform(25, 75)  # grey paper, dark ink (0-255)
    img = paper + (pen - paper) * coverage  # (SIDE, SIDE)
    if style == "specks":
        yy, xx = np.mgrid[0:SIDE, 0:SIDE]
        for _ in range(int(rng.integers(3, 9))):
            cy, cx, r = rng.uniform(0, SIDE), rng.uniform(0, SIDE), rng.uniform(1.0, 3.0)
            img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, rng.uniform(pen, pen + 60), img)
    if style == "edge":  # the paper ends 4-25 px from one side; beyond it a dark table
        side, depth, slope = int(rng.integers(4)), rng.uniform(4, 25), rng.uniform(-0.08, 0.08)
        yy, xx = np.mgrid[0:SIDE, 0:SIDE]
        along, across = [(xx, yy), (yy, xx), (xx, SIDE - 1 - yy), (yy, SIDE - 1 - xx)][side]
        img = np.where(across < depth + slope * (along - SIDE / 2), rng.uniform(30, 90), img)
    gradient = rng.uniform(20, 60)
    light = 1.0 - (gradient / paper) * ramp(rng)  # paper drops `gradient` levels across the page
    if style == "shadow":  # a soft-edged shadow over part of the page, from one side
        edge = (ramp(rng) - rng.uniform(0.35, 0.65)) / rng.uniform(0.03, 0.12)
        light = light * (1.0 - rng.uniform(0.25, 0.5) / (1.0 + np.exp(-edge)))
    img = img * light + rng.normal(0.0, rng.uniform(2.0, 6.0), size=img.shape)  # sensor noise
    image = Image.fromarray(np.uint8(np.clip(img, 0, 255).round()))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))  # the lens
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(rng.integers(60, 91)))
    return buf.getvalue()


def photo_set(name: str, X_test, y_test) -> list[tuple[bytes, int, str]]:
    """The ``name`` ("dev" or "test") set from MNIST's test digits ``X_test`` (10000, 784) and
    labels: [(JPEG bytes, label, style)], the same bytes on every run."""
    seed, first, per_style = SETS[name]
    rng = np.random.default_rng(seed)
    out, i = [], first
    for style in STYLES:
        for k in range(per_style):
            kind = style if style in ("handwritten", "printed") else ("handwritten", "printed")[k % 2]
            if kind == "handwritten":
                label, ink = int(y_test[i]), handwritten_ink(X_test[i], rng)
                i += 1
            else:
                label = int(rng.integers(10))
                ink = printed_ink(label, rng)
            out.append((page(ink, style, rng), label, style))
    return out


def accuracy_by_style(model, photos, prepare) -> dict[str, float]:
    """{style: accuracy, …, "all": accuracy} of ``model`` on ``photos``, each image through ``prepare``."""
    from gpumlp.cli.predict import predict_images

    results = predict_images(model, [prepare(data) for data, _, _ in photos])
    right = np.array([r["digit"] == label for r, (_, label, _) in zip(results, photos)])
    styles = np.array([style for _, _, style in photos])
    return {**{s: float(right[styles == s].mean()) for s in STYLES}, "all": float(right.mean())}


if __name__ == "__main__":  # python tests/standins/photo_sets.py CKPT [dev|test]
    import gpumlp
    from gpumlp.data.load import load_mnist

    _, _, X, y = load_mnist(download=False)
    model, _ = gpumlp.load(sys.argv[1])
    scores = accuracy_by_style(model, photo_set(sys.argv[2] if len(sys.argv) > 2 else "dev", X, y), gpumlp.load_digit)
    print("  ".join(f"{k} {v:.1%}" for k, v in scores.items()))
