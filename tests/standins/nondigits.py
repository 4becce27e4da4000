"""Images that are not one digit, drawn as a user would hand them in: letters, shapes and two
digits side by side, dark ink on white paper, 200×200 (the first two as PNG bytes).

    nondigit_set(X_test, y_test, seed)   [(PNG bytes, kind)]: 60 images, 20 of each kind
    LETTERS, SHAPES                      what is drawn

Letters that look like digits (O, I, l, S, Z, B, G, b, g, q) are left out; so is a circle (a 0)
and a vertical bar (a 1). The same seed gives the same bytes.
"""

from __future__ import annotations

import io

import numpy as np

SIDE = 200
LETTERS = "ACEFHKMNPRTUVWXYadefhkmnrtwxy"
SHAPES = ("triangle", "square", "star", "cross", "smiley", "heart", "arrow", "wave")
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def letter(ch: str, rng: np.random.Generator) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    from standins.photo_sets import font_path

    font = ImageFont.truetype(str(font_path(FONTS[int(rng.integers(len(FONTS)))])), int(rng.integers(110, 170)))
    im = Image.new("L", (SIDE, SIDE), 255)
    ImageDraw.Draw(im).text((SIDE / 2, SIDE / 2), ch, fill=0, font=font, anchor="mm")
    return _png(im.rotate(rng.uniform(-10, 10), Image.BICUBIC, fillcolor=255))


def shape(name: str, rng: np.random.Generator) -> bytes:
    """A shape drawn with a pen 8-16 px wide, 100-150 px across."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (SIDE, SIDE), 255)
    d = ImageDraw.Draw(im)
    r, w = rng.uniform(50, 75), int(rng.integers(8, 17))
    c = SIDE / 2 + rng.uniform(-10, 10, size=2)

    def at(points):  # unit-circle points → pixels
        return [(float(c[0] + r * x), float(c[1] + r * y)) for x, y in points]

    if name in ("triangle", "square", "star"):
        k, step = {"triangle": (3, 1), "square": (4, 1), "star": (5, 2)}[name]
        angles = -np.pi / 2 + 2 * np.pi * step * np.arange(k + 1) / k
        d.line(at(zip(np.cos(angles), np.sin(angles))), fill=0, width=w, joint="curve")
    elif name == "cross":
        d.line(at([(-1, -1), (1, 1)]), fill=0, width=w)
        d.line(at([(-1, 1), (1, -1)]), fill=0, width=w)
    elif name == "smiley":
        d.ellipse(at([(-1, -1), (1, 1)]), outline=0, width=w)
        d.ellipse(at([(-0.45, -0.45), (-0.25, -0.2)]), fill=0)
        d.ellipse(at([(0.25, -0.45), (0.45, -0.2)]), fill=0)
        d.arc(at([(-0.55, -0.45), (0.55, 0.6)]), 20, 160, fill=0, width=max(4, w // 2))
    elif name == "heart":
        t = np.linspace(0, 2 * np.pi, 60)
        x, y = 16 * np.sin(t) ** 3 / 17, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 17
        d.line(at(zip(x, y)), fill=0, width=w, joint="curve")
    elif name == "arrow":
        d.line(at([(-1, 0), (1, 0)]), fill=0, width=w)
        d.line(at([(0.4, -0.5), (1, 0), (0.4, 0.5)]), fill=0, width=w, joint="curve")
    else:  # wave
        x = np.linspace(-1, 1, 40)
        d.line(at(zip(x, 0.4 * np.sin(3 * np.pi * x))), fill=0, width=w, joint="curve")
    return _png(im.rotate(rng.uniform(-15, 15), Image.BICUBIC, fillcolor=255))


def two_digits(a28, b28, rng: np.random.Generator) -> bytes:
    """Two MNIST digits side by side, 90 px each, a small gap: "42" as a user might write it."""
    from PIL import Image

    im = Image.new("L", (SIDE, SIDE), 255)
    for k, digit in enumerate((a28, b28)):
        ink = np.uint8(255 - np.clip(np.asarray(digit).reshape(28, 28), 0, 1) * 255)
        im.paste(Image.fromarray(ink).resize((100, 100), Image.BICUBIC), (int(5 + 90 * k + rng.integers(-5, 6)), 50))
    return _png(im)


def nondigit_set(X_test, y_test, seed: int = 27) -> list[tuple[bytes, str]]:
    """60 non-digits, 20 of each kind ("letter", "shape", "two digits"), from MNIST test digits
    8000 on for the pairs: [(PNG bytes, kind)]."""
    rng = np.random.default_rng(seed)
    out = [(letter(LETTERS[int(rng.integers(len(LETTERS)))], rng), "letter") for _ in range(20)]
    out += [(shape(SHAPES[k % len(SHAPES)], rng), "shape") for k in range(20)]
    out += [(two_digits(X_test[8000 + 2 * k], X_test[8001 + 2 * k], rng), "two digits") for k in range(20)]
    return out
