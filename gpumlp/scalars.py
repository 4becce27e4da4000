"""Scalars for the hot loop's array operations, without importing numpy (``gpumlp --help`` builds
its options from modules that import this one, and should not wait for numpy)."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=512)  # a few per dtype, and one per learning rate and last-batch size
def const(xp, dtype, value):
    """``value`` for an operation on ``dtype`` arrays of ``xp``: on numpy a 0-d array, made once.

    The hot loop writes ``xp.multiply(Z, const(xp, Z.dtype, 0.5), out=Z)`` where ``Z *= 0.5``
    would read better: numpy converts a Python number on every operation and dispatches the
    operator, ~1 µs together, against ~0.6 µs for the whole multiply of a (10, 16) array; a
    batch-10 step has about twenty such operations. CuPy takes Python numbers as kernel arguments
    at no cost (and a 0-d array would live on one GPU only), so every other backend gets ``value``.
    """
    if xp.__name__ != "numpy":  # dtype: an array's .dtype
        return value
    c = xp.zeros((), dtype=dtype)
    c[...] = value  # stays a 0-d array (arithmetic on one would give a numpy scalar, slower again)
    return c
