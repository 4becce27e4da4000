"""``gpumlp.preprocess``: a path, bytes, a PIL image or a 2-D array → the input gpumlp predict computes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp.errors import ConfigError, GpumlpError

Image = pytest.importorskip("PIL.Image", reason="the images extra (Pillow) is not installed")
THREE = Path(__file__).resolve().parents[1] / "docs" / "digits" / "three.png"


def test_every_kind_of_image_gives_load_digits_input():
    want = gpumlp.load_digit(THREE)
    assert want.shape == (784,) and want.dtype == np.float32 and 0 <= want.min() and want.max() == 1
    im = Image.open(THREE)
    gray = np.asarray(im.convert("L"))  # (h, w) uint8
    for given in (THREE, str(THREE), THREE.read_bytes(), im, im.convert("RGB"), gray, gray / 255.0):
        x = gpumlp.preprocess(given)
        assert x.dtype == np.float32 and x.shape == (784,)
        assert np.abs(x - want).max() < 1e-6, type(given)


def test_a_transparent_pil_image_is_composited_onto_white():
    """Black strokes on a transparent canvas (what a drawing app exports) read as ink on paper."""
    im = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    im.paste((0, 0, 0, 255), (45, 15, 55, 85))  # a 1
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    x = gpumlp.preprocess(im)
    assert np.array_equal(x, gpumlp.preprocess(buf.getvalue()))
    assert x.reshape(28, 28)[14, 14] > 0.5 and x.reshape(28, 28)[0, 0] == 0


@pytest.mark.parametrize(
    ("given", "error", "fragment"),
    [
        (np.zeros((28, 28, 3)), ConfigError, "2-D grey image"),
        (np.full((28, 28), 200.0), ConfigError, "divide float pixels by 255"),
        ([[0, 1], [1, 0]], ConfigError, "got list"),
        (None, ConfigError, "got NoneType"),
        (Image.new("L", (50, 50), 255), GpumlpError, "no ink found"),
        (Image.new("L", (9000, 10), 255), GpumlpError, "too large"),
    ],
)
def test_what_it_cannot_read_is_one_clear_error(given, error, fragment):
    with pytest.raises(error, match=fragment):
        gpumlp.preprocess(given)
