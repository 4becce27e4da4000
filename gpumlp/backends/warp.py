"""The shape of an augmentation warp: what the backends' resampling and the augmenter share.

Below both ``gpumlp.training.augment`` (which draws and applies warps) and the CUDA backend (whose
kernels do the same in one launch each, ``gpumlp.backends.kernels``), so a backend never imports
training.
"""

from __future__ import annotations

from typing import NamedTuple

SIDE = 28  # image side in pixels
PIXELS = SIDE * SIDE  # 784: pixels of one image, a row of X
PAD = SIDE + 3  # side of the zero-bordered copy: 1 pixel before, 2 after (see Augmenter._bilinear)
CENTRE = (SIDE - 1) / 2  # 13.5: the middle of pixels 0 … 27


class Warp(NamedTuple):
    """One batch's drawn transforms, device arrays in the augmenter's dtype; None where a kind is off."""

    A: object  # (b, 2, 2) affine matrices on (row, col) offsets from the centre
    t: object  # (b, 2) translations (row, col) in pixels
    D: object  # (b, 2, 28, 28) elastic displacements (row, col) of every output pixel
