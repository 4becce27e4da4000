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


NO_REPR = r"[^<]*$"  # no "<_io.BytesIO object at 0x…>" in a message


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        (np.zeros((0, 5)), "is 0×5: empty"),
        (np.zeros((5, 0), np.uint8), "is 5×0: empty"),
        (np.full((20, 20), np.nan), "NaN or infinite"),
        (np.where(np.eye(20) > 0, np.nan, 0.0), "NaN or infinite"),
        (np.where(np.eye(20) > 0, 1.0, -np.inf), "NaN or infinite"),
        (np.array([["a", "b"], ["c", "d"]]), "an array of <U1"),
        (np.eye(20, dtype=complex), "an array of complex128"),
        (np.zeros((4, 4), dtype="datetime64[s]"), "an array of datetime64"),
        (np.array([["x", 1.0], [0.0, 1.0]], dtype=object), "values that are not numbers"),
        (np.lib.stride_tricks.as_strided(np.zeros(1), (100_000, 100_000), (0, 0)), "100000×100000: more than"),
    ],
)
def test_an_array_it_cannot_use_is_a_config_error(given, fragment):
    """Not an IndexError or a MemoryError from deep in the preprocessing; the same from ``to_mnist``."""
    for f in (gpumlp.preprocess, gpumlp.to_mnist):
        with pytest.raises(ConfigError, match=fragment):
            f(given)


def test_a_file_it_cannot_read_is_one_clear_error(tmp_path):
    d = np.full((40, 40), 255, np.uint8)
    d[10:30, 18:22] = 0
    buf = io.BytesIO()
    Image.fromarray(d).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:60])
    cut = Image.open(tmp_path / "cut.png")  # the header only: decoded by preprocess
    with pytest.raises(GpumlpError, match=r"the PIL image cannot be decoded \(image file is truncated\)"):
        gpumlp.preprocess(cut)
    for given, fragment in ((b"", "the image data is empty"), (b"hello", "cannot identify image file\\)")):
        with pytest.raises(GpumlpError, match=fragment + NO_REPR):
            gpumlp.preprocess(given)
    with pytest.raises(GpumlpError, match=r"'a\\x00b.png' is not a file name: it holds a NUL character"):
        gpumlp.preprocess("a\0b.png")  # was os.open's ValueError
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(GpumlpError, match=f"{tmp_path / 'empty.png'} is empty \\(0 bytes\\)"):
        gpumlp.preprocess(tmp_path / "empty.png")


def test_a_header_declaring_400_million_pixels_is_refused_before_decoding(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0)  # 20,000 × 20,000 grey
    data = chunk(b"IDAT", zlib.compress(b"\0" * 100))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")
    with pytest.raises(GpumlpError, match=r"the image data is too large \(.*\); scale it down"):
        gpumlp.preprocess(png)


def test_every_pil_mode_of_a_digit_reads_as_the_same_digit():
    """32-bit "I" from an 8-bit image (0-255, read as "no ink" when scaled as 16-bit) and "La"
    (which Pillow converts only to LA) among them."""
    d = np.full((40, 40), 255, np.uint8)
    d[10:30, 18:22] = 0
    base = Image.fromarray(d)
    want = gpumlp.preprocess(base)
    via = {"La": "LA", "HSV": "RGB", "RGBa": "RGBA", "PA": "P"}  # what Pillow converts each from
    for mode in ("1", "P", "RGB", "RGBA", "CMYK", "YCbCr", "HSV", "I", "F", "LA", "PA", "RGBa", "La"):
        x = gpumlp.preprocess(base.convert(via.get(mode, "L")).convert(mode))
        assert np.abs(x - want).max() < 0.02, mode
    sixteen = Image.fromarray(d.astype(np.uint16) * 257)  # 0-65535 grey levels
    assert np.abs(gpumlp.preprocess(sixteen.convert("I")) - want).max() < 0.02
