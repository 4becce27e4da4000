"""Random numbers made on the device, identical on numpy and CuPy.

Dropout masks and augmentation need fresh random numbers for every batch: far too many to draw on
the host and copy over inside the batch loop. numpy's and CuPy's own generators give different
streams for the same seed, so CPU and GPU runs would differ. Instead, each number is a *hash* of
its position and of a per-draw key, computed with plain 32-bit integer array operations (xor,
shift, wrapping multiply), which every array library evaluates bit for bit alike:

    bits[i] = h(h(i ^ key) + k)      h: Chris Wellons' "lowbias32" integer hash
    k       = h(seed, stream, counters...) computed on the host from the draw's coordinates

The coordinates (epoch, batch, layer) name every draw, so there is no generator state to save:
a resumed run draws the same numbers as an uninterrupted one. This is the counter-based design of
Random123 / JAX's PRNG, with a small hash in place of Philox; it is meant for dropout and data
augmentation, not for cryptography or statistics.
"""

from __future__ import annotations

import numpy as np

from gpumlp.backends.base import Backend

MASK32 = 0xFFFFFFFF
STREAMS = {"dropout": 1, "augment": 2}  # independent streams from one seed


def hash32(x: int) -> int:
    """lowbias32 on a Python int (host), the same function ``_hash_array`` applies on the device."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    x ^= x >> 16
    return x


def mix(*values: int) -> int:
    """One 32-bit key from several integers (seed, stream, epoch, batch, …), on the host."""
    h = 0x9E3779B9
    for v in values:
        for word in (v & MASK32, (v >> 32) & MASK32):  # 64-bit values: both halves count
            h = hash32(h ^ hash32(word + 0x632BE5AB))
    return h


def _hash_array(x):
    """lowbias32 on a uint32 device array, in place (multiplication wraps modulo 2³²)."""
    x ^= x >> 16
    x *= np.uint32(0x7FEB352D)
    x ^= x >> 15
    x *= np.uint32(0x846CA68B)
    x ^= x >> 16
    return x


class DeviceRNG:
    """Counter-based random numbers on ``be``'s device: ``bits``, ``uniform`` and ``bernoulli``
    arrays for a draw named by integer coordinates, e.g. ``rng.uniform((b, 800), epoch, batch, layer)``."""

    def __init__(self, be: Backend, seed: int, stream: str):
        self.be = be
        self.key = mix(int(seed), STREAMS[stream])
        self._base = {}  # n → h(arange(n) ^ key) on the device, computed once per size

    def base(self, n: int):
        """h(arange(n) ^ key), uint32 (n,) on the device: the per-position half of every draw of n."""
        base = self._base.get(n)
        if base is None:
            xp = self.be.xp
            base = _hash_array(xp.arange(n, dtype=xp.uint32) ^ np.uint32(self.key))  # (n,)
            self._base[n] = base
        return base

    def draw_key(self, *coords: int) -> np.uint32:
        """k = h(key, coords…) on the host: the per-draw half."""
        return np.uint32(mix(self.key, *coords))

    def bits(self, shape, *coords: int):
        """uint32 array of ``shape`` on the device, a pure function of (seed, stream, coords)."""
        x = self.base(int(np.prod(shape))) + self.draw_key(*coords)  # (n,) wraps modulo 2³²
        return _hash_array(x).reshape(shape)

    def uniform(self, shape, *coords: int, dtype=np.float32):
        """Floats in [0, 1) with 24 random bits each (exact in float32), on the device."""
        u = (self.bits(shape, *coords) >> 8).astype(dtype)
        u *= dtype(2.0**-24)
        return u

    def keep_mask(self, shape, p: float, *coords: int):
        """Boolean array: True with probability 1 − p, independently per element (dropout's keep)."""
        return self.bits(shape, *coords) >= keep_threshold(p)


def keep_threshold(p: float) -> np.uint32:
    """Bits at or above this are kept: a fraction 1 − p of all 2³² values."""
    return np.uint32(min(int(round(p * 2**32)), MASK32))
