"""The digit's connected ink (``gpumlp.data.components``): broken strokes kept, specks and
borders dropped, clean MNIST digits unchanged."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp.cli.predict import predict_images
from gpumlp.data import components
from gpumlp.data.components import label
from gpumlp.data.images import to_mnist

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"


def flood_labels(mask: np.ndarray) -> np.ndarray:
    """The oracle: 8-connected pieces by breadth-first search, numbered by their first pixel."""
    h, w = mask.shape
    out = np.full((h, w), h * w)
    for start in zip(*np.nonzero(mask)):
        if out[start] != h * w:
            continue
        out[start] = start[0] * w + start[1]
        todo = deque([start])
        while todo:
            y, x = todo.popleft()
            for yy in range(max(0, y - 1), min(h, y + 2)):
                for xx in range(max(0, x - 1), min(w, x + 2)):
                    if mask[yy, xx] and out[yy, xx] == h * w:
                        out[yy, xx] = out[start]
                        todo.append((yy, xx))
    return out


@pytest.mark.parametrize("density", [0.2, 0.45, 0.6])
def test_labels_match_a_flood_fill(density):
    rng = np.random.default_rng(int(density * 100))
    for shape in [(1, 1), (1, 30), (17, 23), (40, 40)]:
        mask = rng.random(shape) < density
        assert np.array_equal(label(mask), flood_labels(mask))


def test_a_spiral_is_one_piece():
    """A long winding piece: the pointer jumping must still carry one number along all of it."""
    mask = np.zeros((41, 41), dtype=bool)
    for k in range(0, 20, 2):  # concentric square rings joined at one corner
        mask[k, k : 41 - k] = mask[40 - k, k : 41 - k] = True
        mask[k : 41 - k, k] = mask[k : 41 - k, 40 - k] = True
        if k + 2 < 20:
            mask[k + 1, k + 1] = True
    assert np.array_equal(label(mask), flood_labels(mask))
    assert len(np.unique(label(mask)[mask])) == 1


def drawing(strokes, side: int = 200, width: int = 14) -> np.ndarray:
    """Dark strokes (each a list of points) on white paper: (side, side) grey levels in [0, 1]."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(im)
    for points in strokes:
        draw.line(points, fill=0, width=width, joint="curve")
    return np.asarray(im, dtype=np.float64) / 255.0


# Each digit drawn in two strokes that do not touch (a gap of about 12 pixels), as people write them.
GAPPED = {
    4: [[(110, 30), (55, 120), (140, 120)], [(118, 75), (118, 175)]],  # the bar stops short of the upright
    5: [[(130, 35), (75, 35)], [(72, 50), (65, 95), (110, 90), (130, 125), (115, 165), (65, 165)]],  # the hat apart
    7: [[(60, 40), (140, 40)], [(142, 58), (90, 170)]],  # the stem apart from the bar
}


@pytest.fixture(scope="module")
def shipped():
    return gpumlp.load(SHIPPED)[0]


@pytest.mark.parametrize("digit", sorted(GAPPED))
def test_a_broken_stroke_is_kept(digit, shipped, monkeypatch):
    """Both strokes reach the network: the input is the one every piece of ink gives."""
    pytest.importorskip("PIL")
    strokes = GAPPED[digit]
    x = to_mnist(drawing(strokes))
    larger = max(strokes, key=lambda s: np.hypot(*np.diff(np.array(s), axis=0).T).sum())
    only_larger = to_mnist(drawing([larger]))  # what keeping the largest piece alone would give
    assert np.abs(x - only_larger).sum() > 0.3 * only_larger.sum()
    monkeypatch.setattr(components, "digit", lambda ink, threshold: None)  # every piece kept
    assert np.array_equal(x, to_mnist(drawing(strokes)))
    assert predict_images(shipped, [x])[0]["digit"] == digit


def test_specks_and_a_border_are_dropped():
    """Specks far from the digit and a dark table along the paper's edge: the input is the digit's."""
    pytest.importorskip("PIL")
    seven = GAPPED[7]
    clean = to_mnist(drawing(seven))
    dirty = drawing(seven)
    for y, x in [(10, 10), (190, 20), (185, 185), (100, 190)]:  # dust, 4×4 pixels
        dirty[y - 2 : y + 2, x - 2 : x + 2] = 0.1
    assert np.abs(to_mnist(dirty) - clean).max() < 0.05
    dirty[:, :6] = 0.2  # the table past the paper's left edge, along the whole frame
    assert np.abs(to_mnist(dirty) - clean).max() < 0.05


def test_mnist_test_digits_lose_nothing(mnist, shipped):
    """All 10,000 MNIST test digits through to_mnist: within 0.1 point of the network's own test
    accuracy (98.00% raw, 98.05% through to_mnist when measured)."""
    _, _, X, y = mnist
    raw = np.mean(np.array([r["digit"] for r in predict_images(shipped, list(X))]) == y)
    prepared = [to_mnist(x.reshape(28, 28)) for x in X]
    through = np.mean(np.array([r["digit"] for r in predict_images(shipped, prepared)]) == y)
    assert through >= raw - 0.001


def test_a_digit_that_touches_the_frame_is_kept(monkeypatch):
    """A tightly cropped drawing: the 7's bar runs along the whole top edge and its stem reaches the
    bottom; it is the only ink, so it is the digit (a border is dropped only beside other ink)."""
    pytest.importorskip("PIL")
    tight = drawing([[(0, 3), (199, 3), (80, 199)]], width=14)
    x = to_mnist(tight)
    monkeypatch.setattr(components, "digit", lambda ink, threshold: None)
    assert np.array_equal(x, to_mnist(tight))
