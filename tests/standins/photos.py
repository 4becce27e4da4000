"""Photo-like images made from real MNIST test digits: dark ink on grey paper, photographed.

A phone photo of a digit differs from a scan in ways a single background level cannot undo: the
light falls off across the page (a gradient of tens of grey levels), the sensor adds noise, the
lens blurs, the file is a JPEG, and the page is never quite straight. ``photo`` renders one MNIST
digit that way; every effect is drawn from a seeded generator, so a set is the same on every run.

    photo(digit28, rng, gradient=40, angle=0)   (784,) MNIST pixels → JPEG bytes of a 200×200 photo
    photo_set(X, y, n, seed, …)                 the first ``n`` test digits as [(JPEG bytes, label)]

Nothing is written to disk: the tests feed the bytes to ``gpumlp.data.images.load_digit``.
"""

from __future__ import annotations

import io

import numpy as np

SIDE = 200  # the photo is SIDE × SIDE pixels
DIGIT = 150  # the 28×28 MNIST field is drawn this large (the digit itself about 107 pixels)
QUALITY = 85  # JPEG quality, a phone's usual


def photo(digit28, rng: np.random.Generator, gradient: float = 40.0, angle: float = 0.0) -> bytes:
    """One MNIST digit as a photographed page: (784,) host pixels in [0, 1] (bright ink) → JPEG bytes.

    ``gradient``: how many grey levels (of 255) the light falls by across the page, in a random
    direction; ``angle``: the page's rotation in degrees. Paper and ink shades, noise and blur are
    drawn from ``rng``."""
    from PIL import Image, ImageFilter

    ink = Image.fromarray(np.uint8(np.clip(np.asarray(digit28).reshape(28, 28), 0, 1) * 255))
    ink = ink.resize((DIGIT, DIGIT), Image.BICUBIC)
    field = Image.new("L", (SIDE, SIDE), 0)
    offset = (SIDE - DIGIT) // 2 + rng.integers(-10, 11, size=2)
    field.paste(ink, tuple(int(o) for o in offset))
    if angle:
        field = field.rotate(angle, resample=Image.BICUBIC, fillcolor=0)
    coverage = np.asarray(field, dtype=np.float64) / 255.0  # (SIDE, SIDE) 1 where the pen went
    paper, pen = rng.uniform(150, 200), rng.uniform(30, 70)  # grey paper, dark ink (0-255)
    page = paper + (pen - paper) * coverage  # (SIDE, SIDE)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / (SIDE - 1) - 0.5  # (SIDE, SIDE) each in [-0.5, 0.5]
    ramp = xx * np.cos(theta) + yy * np.sin(theta)  # along the light's direction
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())  # 0 at the lit edge, 1 at the dark one
    light = 1.0 - (gradient / paper) * ramp  # falls off multiplicatively: paper drops `gradient` levels
    page = page * light + rng.normal(0.0, 3.0, size=page.shape)  # sensor noise, σ = 3 levels
    image = Image.fromarray(np.uint8(np.clip(page, 0, 255).round()))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.4)))  # the lens
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=QUALITY)
    return buf.getvalue()


def photo_set(X, y, n: int, seed: int, gradient=(20.0, 60.0), angle=(-6.0, 6.0)) -> list[tuple[bytes, int]]:
    """The first ``n`` of the digits ``X`` (n, 784) with labels ``y`` as photos: [(JPEG bytes, label)].

    Each photo's gradient (grey levels) and angle (degrees) are drawn uniformly from the given
    ranges, a number for a fixed value; the same ``seed`` gives the same bytes."""
    rng = np.random.default_rng(seed)
    lo_g, hi_g = (gradient, gradient) if np.isscalar(gradient) else gradient
    lo_a, hi_a = (angle, angle) if np.isscalar(angle) else angle
    return [(photo(X[i], rng, rng.uniform(lo_g, hi_g), rng.uniform(lo_a, hi_a)), int(y[i])) for i in range(n)]
