"""MNIST test digits written as the files people have: upscaled, inverted, off-centre, JPEG.

    TRANSFORMS                          name → (28×28 white-on-black PIL image → image, file format)
    agreement(model, X, transform, fmt) the share of digits X (n, 784) whose file gets the
                                        prediction of the original 28×28 digit
    python tests/standins/transforms.py CKPT [N]   that share over the first N (10,000) test digits

Files are encoded in memory and read back through ``gpumlp.load_digit``, as ``gpumlp predict``
reads a file.
"""

from __future__ import annotations

import io
import sys

import numpy as np


def upscale(im, size):
    from PIL import Image

    return im.resize(size, Image.Resampling.BICUBIC)


def invert(im):
    from PIL import Image

    return Image.eval(im, lambda v: 255 - v)


def corner(im):
    """Black ink on a 300×300 white canvas, the digit 110 px tall in the top-right corner."""
    from PIL import Image

    canvas = Image.new("L", (300, 300), 255)
    canvas.paste(invert(upscale(im, (110, 110))), (175, 15))
    return canvas


TRANSFORMS = {
    "upscaled 200x200": (lambda im: upscale(im, (200, 200)), "PNG"),
    "upscaled 97x97": (lambda im: upscale(im, (97, 97)), "BMP"),
    "inverted 200x200": (lambda im: invert(upscale(im, (200, 200))), "PNG"),
    "off-centre on 300x300 white": (corner, "PNG"),
    "inverted 200x200 JPEG": (lambda im: invert(upscale(im, (200, 200))), "JPEG"),
}
STRETCHED = {  # the digit's shape changes: keeping the aspect ratio cannot undo it
    "stretched 97x143": (lambda im: upscale(im, (97, 143)), "PNG"),
    "stretched 143x97": (lambda im: upscale(im, (143, 97)), "PNG"),
}


def agreement(model, X, transform, fmt: str) -> float:
    """The share of digits X (n, 784) host, pixel / 255, predicted the same from the transformed
    file as from the original 28×28 digit."""
    from PIL import Image

    from gpumlp.cli.predict import predict_images
    from gpumlp.data.images import load_digit

    original = [r["digit"] for r in predict_images(model, list(X))]
    inputs = []
    for x in X:
        buf = io.BytesIO()
        transform(Image.fromarray(np.round(x.reshape(28, 28) * 255).astype(np.uint8))).save(buf, format=fmt)
        inputs.append(load_digit(buf.getvalue()))
    again = [r["digit"] for r in predict_images(model, inputs)]
    return float(np.mean(np.array(again) == np.array(original)))


if __name__ == "__main__":  # python tests/standins/transforms.py CKPT [N]
    import gpumlp
    from gpumlp.data.load import load_mnist

    X = load_mnist(download=False)[2][: int(sys.argv[2]) if len(sys.argv) > 2 else None]
    model, _ = gpumlp.load(sys.argv[1])
    for name, (transform, fmt) in {**TRANSFORMS, **STRETCHED}.items():
        print(f"{name} ({fmt}): {100 * agreement(model, X, transform, fmt):.2f}% of {len(X)} agree", flush=True)
