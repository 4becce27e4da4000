"""Photos of digits: uneven light, noise, blur, JPEG and a tilted page (``standins.photos``).

The shipped network must read photographed MNIST test digits: one background level for the whole
image (the border's median, before the local estimate) read 25 of 100 such photos; the local
background read 87, and keeping only the digit's connected ink (``gpumlp.data.components``:
noise and haze no longer stretch the crop) 99. A flat-lit set keeps its accuracy (99 of 100).
``standins.photo_sets`` has the larger development and test sets (printed digits, shadows, edges)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp.cli.predict import predict_images
from gpumlp.data.images import background, load_digit, to_mnist
from gpumlp.errors import GpumlpError
from standins.photos import photo, photo_set

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"
SEED = 26  # the test set's seed and digits (MNIST test 0-99): fixed, never tuned on (tuning used 5000-5199, seed 7)

pytest.importorskip("PIL")


@pytest.fixture(scope="module")
def shipped():
    model, _ = gpumlp.load(SHIPPED)
    return model


def accuracy(model, photos) -> float:
    results = predict_images(model, [load_digit(data) for data, _ in photos])
    return float(np.mean([r["digit"] == label for r, (_, label) in zip(results, photos)]))


def test_photos_with_a_lighting_gradient_are_read(shipped, mnist):
    """Gradients of 20-60 grey levels, pages tilted up to 6°: 25% with one background level, 87%
    with the local background, 99% keeping the digit's connected ink."""
    _, _, X, y = mnist
    assert accuracy(shipped, photo_set(X, y, 100, SEED)) >= 0.95


def test_flat_lit_photos_keep_their_accuracy(shipped, mnist):
    """No gradient: 99% with one background level, 99% now."""
    _, _, X, y = mnist
    assert accuracy(shipped, photo_set(X, y, 100, SEED, gradient=0.0)) >= 0.97


def test_the_photo_set_is_reproducible(mnist):
    _, _, X, y = mnist
    first, again = photo_set(X, y, 3, SEED), photo_set(X, y, 3, SEED)
    assert first == again and photo_set(X, y, 3, SEED + 1) != first
    assert all(data[:2] == b"\xff\xd8" for data, _ in first)  # JPEG files


def test_a_gradient_is_background_not_ink():
    """A page lit from the left with one stroke: the estimate follows the light, and only the
    stroke survives (one level for the page turned its dim side into ink)."""
    light = np.tile(np.linspace(0.0, 0.25, 200), (200, 1))  # (200, 200) ink bright: dim side bright
    page = light.copy()
    page[60:140, 95:105] = 0.9  # the stroke
    ground = background(page)
    assert np.abs(ground - light).max() < 0.03
    x = to_mnist(1.0 - page)  # dark ink on a page that darkens to the right
    cols = np.flatnonzero(x.reshape(28, 28).max(axis=0) > 0.1)
    assert cols.size <= 3  # the stroke alone; one background level kept 5 columns of the dim side


def test_a_photo_of_nothing_has_no_ink():
    with pytest.raises(GpumlpError, match="no ink found"):
        load_digit(photo(np.zeros(784), np.random.default_rng(0), gradient=50.0))
