"""The digit's connected ink: which strokes of an image are the digit, which are specks or borders.

A photo holds more than the digit: dust and dirt on the paper, the table past the paper's edge, a
shadow's dark corner. Each stretches the crop ``to_mnist`` makes, and the digit shrinks to a
corner of the 20×20 box. ``digit`` labels the ink's connected pieces (8-connected, numpy
only; ``to_mnist`` hands it a copy at most ``LABEL_SIDE`` pixels long) and keeps the digit:

    1. pieces lying along the image's frame (a table, a paper edge, a shadow) are set aside,
       unless nothing else has ink;
    2. the piece with the most ink is the digit's core;
    3. every piece with at least ``MIN_PIECE`` of the core's ink that lies within ``NEAR`` of the
       digit's size from what is kept joins it, again until none does: a 4, 5 or 7 drawn in two
       strokes that do not touch keeps both, a speck far away or a speck of dust does not.

Everything here runs on the host with numpy.
"""

from __future__ import annotations

import numpy as np

LABEL_SIDE = 160  # pixels: the longest side of the copy the pieces are labelled on
MIN_PIECE = 0.05  # of the core's ink: a smaller piece is a speck, dropped wherever it lies
NEAR = 0.3  # of the kept ink's larger side: a gap up to this between pieces is a broken stroke
STRONG = 0.3  # of the strongest ink: what is labelled (a shadow's faint edge is not)
GROW = 1  # pixels of the labelled copy kept around the digit's ink
FRAME = 0.3  # of the image's longer side: a piece with this much of the frame is a border


def label(mask: np.ndarray) -> np.ndarray:
    """(h, w) bool → (h, w) int64: each 8-connected piece of True numbered by its first pixel's
    flat index (row-major), ``h * w`` off the mask.

    Each pass takes the smallest number in every pixel's 3×3 neighbourhood, then follows the
    numbers as pointers (each names a pixel of the same piece) until they stop changing; a few
    passes settle a digit."""
    h, w = mask.shape
    off = h * w
    lab = np.where(mask, np.arange(off).reshape(h, w), off)  # (h, w)
    while True:
        p = np.pad(lab, 1, constant_values=off)  # (h + 2, w + 2)
        low = lab.copy()
        for dy in range(3):
            for dx in range(3):
                np.minimum(low, p[dy : dy + h, dx : dx + w], out=low)
        flat = np.append(np.where(mask, low, off).ravel(), off)  # (h·w + 1,) the last: off the mask
        while True:  # pointer jumping: each label takes its label's label
            jumped = flat[flat]
            if np.array_equal(jumped, flat):
                break
            flat = jumped
        new = flat[:-1].reshape(h, w)
        if np.array_equal(new, lab):
            return new
        lab = new


def pieces(ink: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The pieces of ``mask`` (h, w) with ``ink`` (h, w): (index (h, w), -1 off the mask; per piece
    (k,) arrays ``mass`` (ink summed), ``top``, ``bottom``, ``left``, ``right`` (inclusive) and
    ``frame`` (pixels on the image's outer frame))."""
    lab = label(mask)
    ys, xs = np.nonzero(mask)
    _, which = np.unique(lab[ys, xs], return_inverse=True)  # (m,) piece of each ink pixel
    k = int(which.max()) + 1 if which.size else 0
    index = np.full(mask.shape, -1)
    index[ys, xs] = which
    on_frame = (ys == 0) | (ys == mask.shape[0] - 1) | (xs == 0) | (xs == mask.shape[1] - 1)
    stats = {"mass": np.bincount(which, weights=ink[ys, xs], minlength=k), "frame": np.bincount(which, on_frame, k)}
    for name, values, reduce, start in (
        ("top", ys, np.minimum, mask.shape[0]), ("bottom", ys, np.maximum, -1),
        ("left", xs, np.minimum, mask.shape[1]), ("right", xs, np.maximum, -1),
    ):  # fmt: skip
        stats[name] = np.full(k, start)
        reduce.at(stats[name], which, values)
    return index, stats


def keep(stats: dict[str, np.ndarray], side: int) -> np.ndarray:
    """Which pieces are the digit, (k,) bool, from ``pieces``' stats; ``side``: the image's longer side."""
    mass = stats["mass"]
    candidate = stats["frame"] < FRAME * side  # not a border
    if not candidate.any():
        candidate = np.ones_like(candidate)
    kept = np.zeros_like(candidate)
    kept[np.argmax(np.where(candidate, mass, -1.0))] = True
    candidate &= mass >= MIN_PIECE * mass[kept].max()
    while True:
        top, bottom = stats["top"][kept].min(), stats["bottom"][kept].max()
        left, right = stats["left"][kept].min(), stats["right"][kept].max()
        reach = NEAR * max(bottom - top + 1, right - left + 1)
        gap_y = np.maximum(0, np.maximum(stats["top"] - bottom, top - stats["bottom"]))
        gap_x = np.maximum(0, np.maximum(stats["left"] - right, left - stats["right"]))
        joins = candidate & ~kept & (np.maximum(gap_y, gap_x) <= reach)
        if not joins.any():
            return kept
        kept |= joins


def digit(ink: np.ndarray, threshold: float, grow: int = GROW) -> np.ndarray | None:
    """(h, w) ink in [0, 1], bright on black → (h, w) bool, True on the digit's pieces of ink
    above ``threshold`` and the ``grow`` pixels around them (a stroke's faint rim), False on
    specks, borders and the faint haze a noisy photo leaves elsewhere; None when there is no ink
    above ``threshold`` (host)."""
    mask = ink > threshold
    if not mask.any():
        return None
    index, stats = pieces(ink, mask)
    kept = mask & keep(stats, max(ink.shape))[index]  # (h, w)
    h, w = mask.shape
    for _ in range(grow):
        p = np.pad(kept, 1)  # (h + 2, w + 2)
        for dy in range(3):
            for dx in range(3):
                kept = kept | p[dy : dy + h, dx : dx + w]
    return kept
