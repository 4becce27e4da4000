"""A user's image turned into the network's input, the way MNIST was made.

MNIST's digits were size-normalised to fit a 20×20 box (keeping the aspect ratio, anti-aliased)
and placed in a 28×28 field so that their centre of mass sits at the centre. ``to_mnist`` does
the same to any photo or drawing, so a network trained on MNIST sees what it was trained on:

    load_image(path)   file or its bytes → (h, w) grey levels in [0, 1] on the host (needs Pillow)
    to_mnist(gray)     (h, w) → (784,) bright ink on black, 20×20 box, centre of mass at (14, 14)
    load_digit(path)   both: what ``gpumlp predict``, ``gpumlp serve`` and ``gpumlp.load_digit`` feed a network
    preprocess(image)  the same from a path, bytes, a PIL image or a 2-D array (``gpumlp.preprocess``)

Everything here runs on the host with numpy (and Pillow to decode a file).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np

from gpumlp.data import components
from gpumlp.errors import ConfigError, GpumlpError
from gpumlp.formats.untrusted import open_regular

PILLOW_HINT = "reading images needs Pillow: pip install 'gpumlp[images]'"
INK_THRESHOLD = 0.1  # after inversion and background removal, a pixel above this is ink
MIN_CONTRAST = 0.1  # an image whose grey levels span less than this has no digit in it
BLOCKS = 8  # the background is estimated in blocks of about 1/BLOCKS of the image's longer side
MIN_BLOCK = 4  # pixels: smaller blocks would see a stroke's inside as background
BACKGROUND_SIDE = 256  # pixels: the longest side of the copy the background is estimated on
BACKGROUND_PERCENTILE = 25  # of a block's pixels (ink bright): the ground, robust to noise and some ink
BOX, FIELD = 20, 28  # MNIST: the digit fits a 20×20 box inside the 28×28 field
RAMP = " .:-=+*#%@"  # ascii_preview, from no ink to full ink
# Pillow refuses only above 179 million pixels (a warning above 89 million); a 177 KB PNG of
# 12,000×12,000 passed and cost 4.5 GB. A digit needs far fewer: refused from the header, before
# any pixel is decoded. 4096×4096 costs about 0.6 GB on its way to 28×28.
MAX_PIXELS = 4096 * 4096
# The pixel cap leaves the longest side free: a 16 KB PNG of 1×16,777,216 passed it and cost 6.1 GB
# on its way to 28×28. Refused from the header too; a camera's photo (8,192 × 5,464 at 45 MP) fits.
MAX_SIDE = 8192


def _pillow():
    """The PIL.Image module, imported only when an image is read (Pillow is an optional extra)."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise GpumlpError(PILLOW_HINT) from None
    return Image, ImageOps


def load_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A PNG, JPEG, BMP, … of any size → (h, w) float64 grey levels in [0, 1] (host), 1 = white.

    ``source``: a file's path, or the file's bytes (``gpumlp serve``: an uploaded PNG). Transparent
    pixels are composited onto white, as a viewer shows them; JPEG EXIF rotation is applied.
    ``max_pixels``: refuse larger images before decoding them. Raises ``GpumlpError`` for a
    missing file, a folder, a FIFO or other non-regular file, a non-image, a too large or a blank image.
    """
    Image, ImageOps = _pillow()
    if isinstance(source, (bytes, bytearray, memoryview)):
        path, fp, size = "the image data", io.BytesIO(source), len(source)
    else:
        path = Path(source)
        fp, size = open_regular(path, GpumlpError, missing=f"image {path} not found; check the path")
    if not size:
        fp.close()
        raise GpumlpError(f"{path} is empty (0 bytes): not an image; give a PNG, JPEG or BMP file")
    try:
        with fp:
            with warnings.catch_warnings():  # Pillow's bomb warning: max_pixels, far lower, is checked here
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fp)  # reads the header only
            if im.width * im.height > max_pixels:
                raise GpumlpError(
                    f"{path} is {im.width}×{im.height} pixels, more than {max_pixels:,}; "
                    "scale it down (a digit needs 28×28)"
                )
            if max(im.width, im.height) > MAX_SIDE:
                raise GpumlpError(
                    f"{path} is {im.width}×{im.height} pixels, longer than {MAX_SIDE:,} on a side; "
                    "crop or scale it down (a digit needs 28×28)"
                )
            im = ImageOps.exif_transpose(im)  # loads the pixels: a truncated file fails here
            gray = pil_gray(im)
    except Image.DecompressionBombError as e:  # Pillow's own cap, met in the header before ours
        raise GpumlpError(f"{path} is too large ({e}); scale it down (a digit needs 28×28)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise GpumlpError(f"{path} is not an image Pillow can read ({_reason(e)}); use PNG, JPEG or BMP") from None
    gray = np.clip(gray, 0.0, 1.0)  # (h, w)
    if gray.size == 0 or gray.max() - gray.min() < MIN_CONTRAST:
        raise GpumlpError(f"{path}: no ink found (the image is one flat colour); draw a digit on it")
    return gray


def _reason(e: Exception) -> str:
    """Pillow's error in one line, without the file object's repr ("<_io.BytesIO object at 0x…>")."""
    return re.sub(r"\s*<_io\.[^>]*>", "", " ".join(str(e).split())) or type(e).__name__


def pil_gray(im) -> np.ndarray:
    """A PIL image of any mode → (h, w) float64 grey levels in [0, 1] (host), 1 = white: 16- and
    32-bit grey levels scaled, transparent pixels composited onto white, as a viewer shows them."""
    Image, _ = _pillow()
    if im.mode.startswith("I"):  # 16- or 32-bit grey levels: 0-65535, or 0-255 (an 8-bit image .convert("I"))
        gray = np.asarray(im, dtype=np.float64)
        return gray / (255.0 if gray.max(initial=0.0) <= 255 else 65535.0)
    if im.mode == "La":  # premultiplied alpha: Pillow converts it only to LA
        im = im.convert("LA")
    if im.mode == "F":  # 32-bit float grey levels: [0, 1] as they are, else 0-255
        gray = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return gray / 255.0 if gray.max(initial=0.0) > 1.0 else gray
    if "A" in im.mode or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("L"), dtype=np.float64) / 255.0
    return np.asarray(im.convert("L"), dtype=np.float64) / 255.0


def area_resize(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Area-averaging resize of ``a`` along ``axis`` to ``n_out`` pixels: each output pixel is the
    mean of the input it covers, partial pixels weighted by overlap.

    Read from a running sum, so memory grows with the input, never with input × output: the
    (n_out, n_in) weight matrix this replaces took 2.7 GB for a 1×16,777,216 image. The running
    sum is float64: a float32 one over n pixels loses log2(n) bits of every mean."""
    a = np.moveaxis(a, axis, 0)  # (n_in, m)
    n_in = a.shape[0]
    total = np.zeros((n_in + 1, *a.shape[1:]))  # (n_in + 1, m) sum of the first i pixels
    np.cumsum(a, axis=0, out=total[1:])
    edges = np.arange(n_out + 1) * (n_in / n_out)  # (n_out + 1,) output edges in input pixels
    whole = np.minimum(np.floor(edges).astype(np.intp), n_in - 1)  # the pixel each edge falls in
    part = (edges - whole)[:, None]  # (n_out + 1, 1) how far into it
    at_edge = total[whole] + part * a[whole]  # (n_out + 1, m) the sum up to each edge
    return np.moveaxis(np.diff(at_edge, axis=0) * (n_out / n_in), 0, axis)


def background(g: np.ndarray) -> np.ndarray:
    """The paper's level at every pixel, for bright ink on a darker ground: (h, w) → (h, w) (host).

    A photo's light falls off across the page, so one level for the whole image (its border's
    median) turns the dim side into ink. As a document scanner does, the level is estimated
    locally: the image is cut into blocks about 1/8 of its longer side (at least ``MIN_BLOCK``
    pixels), each block's ``BACKGROUND_PERCENTILE``-th percentile is its ground (ink is brighter,
    so it is ignored unless it fills most of the block), each block's ground is
    replaced by the median of its 3×3 neighbourhood (a block inside a thick stroke takes its
    neighbours'; a steady gradient is kept), smoothed by a 3×3 mean and interpolated back to
    full size. A flat ground gives that flat level, as before."""
    h, w = g.shape
    # The ground changes slowly: estimated on a copy at most BACKGROUND_SIDE pixels long (area
    # averaging), a 12-megapixel photo costs what a small one does.
    scale = min(1.0, BACKGROUND_SIDE / max(h, w))
    hs, ws = max(1, round(h * scale)), max(1, round(w * scale))
    small = g if (hs, ws) == (h, w) else area_resize(area_resize(g, hs, 0), ws, 1)  # (hs, ws)
    block = max(MIN_BLOCK, -(-max(hs, ws) // BLOCKS))
    ny, nx = -(-hs // block), -(-ws // block)
    padded = np.pad(small, ((0, ny * block - hs), (0, nx * block - ws)), mode="edge")  # (ny·block, nx·block)
    tiles = padded.reshape(ny, block, nx, block).transpose(0, 2, 1, 3).reshape(ny, nx, -1)
    grid = np.percentile(tiles, BACKGROUND_PERCENTILE, axis=2)  # (ny, nx) each block's ground
    grid = _grid_filter(grid, np.median)  # (ny, nx)
    grid = _grid_filter(grid, np.mean)
    return _upsample(grid, (block * h / hs, block * w / ws), h, w)


def _upsample(grid: np.ndarray, block: tuple[float, float], h: int, w: int) -> np.ndarray:
    """Bilinear interpolation of a (ny, nx) grid of block centres, ``block`` (rows, columns) pixels
    apart, to (h, w), extended linearly past the outer centres (clamped, a gradient would stop half
    a block short of the edge)."""
    ny, nx = grid.shape
    ry = (np.arange(h) + 0.5) / block[0] - 0.5  # (h,) position in the grid, block centres at integers
    rx = (np.arange(w) + 0.5) / block[1] - 0.5  # (w,)
    y0 = np.clip(np.floor(ry).astype(np.intp), 0, max(ny - 2, 0))
    x0 = np.clip(np.floor(rx).astype(np.intp), 0, max(nx - 2, 0))
    y1, x1 = np.minimum(y0 + 1, ny - 1), np.minimum(x0 + 1, nx - 1)
    fy, fx = (ry - y0)[:, None], (rx - x0)[None, :]  # outside [0, 1] past the outer centres
    rows = grid[:, x0] + (grid[:, x1] - grid[:, x0]) * fx  # (ny, w): along the rows first, small
    out = rows[y1] - rows[y0]  # (h, w)
    out *= fy
    out += rows[y0]
    return out


def _grid_filter(grid: np.ndarray, reduce) -> np.ndarray:
    """``reduce`` (np.min, np.mean) over each cell's 3×3 neighbourhood, edges repeated: (ny, nx) → (ny, nx)."""
    ny, nx = grid.shape
    p = np.pad(grid, 1, mode="edge")  # (ny + 2, nx + 2)
    shifted = np.stack([p[dy : dy + ny, dx : dx + nx] for dy in range(3) for dx in range(3)])  # (9, ny, nx)
    return reduce(shifted, axis=0)


def _ink(g: np.ndarray) -> np.ndarray:
    """(h, w) grey levels in [0, 1] → (h, w) ink in [0, 1], bright on black, the strongest ink 1.

    Inverts when the border is light (dark ink on paper), subtracts the local background
    (``background``) and divides by what is left of the local range, so ink on the dim side of a
    photo is as strong as on the lit side (the paper's brightness divides out, as in a scanner)."""
    border = np.concatenate([g[0, :], g[-1, :], g[:, 0], g[:, -1]])  # the outer frame
    # Light background: dark ink on paper. Against the image's own mid-grey, not 0.5: grey paper
    # on the dim side of a photo can be darker than 0.5 and still far lighter than the ink.
    if np.median(border) > (g.min() + g.max()) / 2:
        g = 1.0 - g
    ground = background(g)  # (h, w)
    g = g - ground  # background → 0 (in place from here: a photo has millions of pixels)
    np.clip(g, 0.0, None, out=g)
    np.subtract(1.0, ground, out=ground)  # what is left of the range above the ground
    g /= np.maximum(ground, MIN_CONTRAST, out=ground)
    peak = g.max() if g.size else 0.0
    if peak < MIN_CONTRAST:
        raise GpumlpError("no ink found: the image is one flat colour; draw a digit on it")
    return g / peak  # the strongest ink → 1, as in MNIST


def _digit_only(g: np.ndarray) -> np.ndarray:
    """(h, w) ink → the same with all but the digit's ink and its rim (specks, borders, haze)
    set to 0 (``components``), judged on a copy at most ``components.LABEL_SIDE`` pixels long."""
    h, w = g.shape
    scale = min(1.0, components.LABEL_SIDE / max(h, w))
    hs, ws = max(1, round(h * scale)), max(1, round(w * scale))
    small = g if (hs, ws) == (h, w) else area_resize(area_resize(g, hs, 0), ws, 1)  # (hs, ws)
    digit = components.digit(small, components.STRONG)  # (hs, ws) or None
    if digit is None:
        return g
    rows = np.minimum((np.arange(h) * hs) // h, hs - 1)  # (h,) the small row each row falls in
    cols = np.minimum((np.arange(w) * ws) // w, ws - 1)
    return np.where(digit[np.ix_(rows, cols)], g, 0.0)


def _gray_levels(gray) -> np.ndarray:
    """``to_mnist``'s input checked and as float64 in [0, 1] (uint8 scaled): a 2-D array of real
    numbers, not empty, finite, at most ``MAX_PIXELS`` and ``MAX_SIDE`` as a decoded file is.
    Anything else is a ``ConfigError`` (not an IndexError deep inside the preprocessing)."""
    g = np.asarray(gray)
    if g.ndim != 2:
        raise ConfigError(f"to_mnist expects a 2-D grey image (h, w), got shape {g.shape}")
    if g.size > MAX_PIXELS or max(g.shape) > MAX_SIDE or not g.size:
        what = "empty" if not g.size else f"more than {MAX_PIXELS:,} pixels or {MAX_SIDE:,} on a side"
        raise ConfigError(f"the grey image is {g.shape[0]}×{g.shape[1]}: {what}; give a digit's picture")
    if g.dtype == np.uint8:
        return g / 255.0
    if g.dtype.kind == "O":
        try:
            g = g.astype(np.float64)
        except (TypeError, ValueError):
            raise ConfigError("the grey image holds values that are not numbers") from None
    if g.dtype.kind not in "biuf":
        raise ConfigError(f"the grey image is an array of {g.dtype}; give real numbers (floats in [0, 1] or uint8)")
    g = g.astype(np.float64)
    if not np.isfinite(g).all():
        raise ConfigError("the grey image holds NaN or infinite values; give finite grey levels in [0, 1]")
    return g


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """(h, w) grey levels in [0, 1] (host; uint8 0–255 also accepted) → (784,) float32 in [0, 1].

    Inverts when the border is light (ink must be bright on black), removes the background,
    estimated locally so uneven lighting does not become ink (``background``), stretches the
    ink to full brightness, keeps the digit's connected ink (specks, a table at the paper's edge,
    a shadow's rim and noise dropped; broken strokes kept: ``components``), crops to the ink,
    scales it to fit 20×20 keeping the aspect ratio (area averaging), and pastes it in 28×28 with
    its centre of mass at (14, 14).
    """
    g = _ink(_gray_levels(gray))  # (h, w)
    g = _digit_only(g)
    rows, cols = np.flatnonzero((g > INK_THRESHOLD).any(axis=1)), np.flatnonzero((g > INK_THRESHOLD).any(axis=0))
    crop = g[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # (h', w') the ink's bounding box
    h, w = crop.shape
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    # The axis that shrinks most first: the second pass then reads the smaller array.
    first, second = ((0, nh), (1, nw)) if h / nh >= w / nw else ((1, nw), (0, nh))
    small = area_resize(area_resize(crop, first[1], first[0]), second[1], second[0])  # (nh, nw), fits 20×20
    mass = small.sum()
    cy = (small.sum(axis=1) @ np.arange(nh)) / mass  # centre of mass, row index
    cx = (small.sum(axis=0) @ np.arange(nw)) / mass  # centre of mass, column index
    # Shift by whole pixels (as MNIST did), never pushing ink out of the field.
    oy = int(np.clip(round(FIELD / 2 - cy), 0, FIELD - nh))
    ox = int(np.clip(round(FIELD / 2 - cx), 0, FIELD - nw))
    out = np.zeros((FIELD, FIELD), dtype=np.float32)  # (28, 28)
    out[oy : oy + nh, ox : ox + nw] = np.clip(small, 0.0, 1.0)
    return out.reshape(-1)  # (784,)


def load_digit(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file, or its bytes → (784,) MNIST-style input: ``to_mnist(load_image(source))``,
    errors naming the file."""
    gray = load_image(source, max_pixels)
    try:
        return to_mnist(gray)
    except GpumlpError as e:
        if isinstance(source, (bytes, bytearray, memoryview)):
            raise
        raise GpumlpError(f"{source}: {e}") from None


def preprocess(image) -> np.ndarray:
    """Any image → (784,) float32 in [0, 1], the input ``gpumlp predict`` computes for it (host):
    28×28 row by row, bright ink on black, as ``load_mnist`` scales MNIST (an ONNX export takes
    raw pixels: multiply by 255).

    ``image``: a file's path, the file's bytes, a PIL image, or a 2-D array of grey levels (floats
    in [0, 1] or uint8 0–255; dark ink on light paper or light on dark). Raises ``GpumlpError``
    for an unreadable or blank image, ``ConfigError`` for anything else."""
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        return load_digit(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 2:
            raise ConfigError(
                f"preprocess takes a 2-D grey image (h, w), got shape {image.shape}; convert colour to grey"
            )
        gray = _gray_levels(image)  # (h, w) float64, checked
        if image.dtype != np.uint8 and gray.max() > 1.0:
            raise ConfigError("preprocess takes grey levels in [0, 1] or uint8 0-255; divide float pixels by 255")
        return to_mnist(gray)
    if type(image).__module__.startswith("PIL.") and hasattr(image, "mode"):
        if image.width * image.height > MAX_PIXELS or max(image.width, image.height) > MAX_SIDE:
            raise GpumlpError(f"the image is {image.width}×{image.height} pixels, too large; scale it down")
        try:
            gray = pil_gray(image)  # an image from Image.open is decoded here: a truncated file fails here
        except (OSError, ValueError, SyntaxError) as e:
            raise GpumlpError(f"the PIL image cannot be decoded ({_reason(e)}); is its file complete?") from None
        if gray.size == 0 or gray.max() - gray.min() < MIN_CONTRAST:
            raise GpumlpError("no ink found (the image is one flat colour); draw a digit on it")
        return to_mnist(gray)
    raise ConfigError(f"preprocess takes a path, bytes, a PIL image or a 2-D array, got {type(image).__name__}")


def ascii_preview(x784, pool: int = 1) -> str:
    """What the network saw, as text: (784,) host pixels in [0, 1] → 28 lines (``pool=2``: 14
    lines of 2×2 means). Each cell is two characters wide so the digit keeps its shape."""
    if pool not in (1, 2):
        raise ConfigError(f"ascii_preview pool must be 1 or 2, got {pool}")
    img = np.asarray(x784, dtype=np.float64).reshape(FIELD, FIELD)  # (28, 28)
    n = FIELD // pool
    img = img.reshape(n, pool, n, pool).mean(axis=(1, 3))  # (n, n)
    idx = np.clip((img * len(RAMP)).astype(int), 0, len(RAMP) - 1)  # (n, n) index into RAMP
    chars = np.array(list(RAMP))[idx]
    return "\n".join("".join(c + c for c in row) for row in chars)
