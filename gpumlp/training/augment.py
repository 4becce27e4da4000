"""Random geometric augmentation of MNIST mini-batches, on the device, identical on numpy and CuPy.

Every output pixel p = (row, col) of a 28×28 image reads the input at a *source coordinate* s(p),
by bilinear interpolation with zeros outside the image. All requested kinds are composed into one
source-coordinate field, so each batch is interpolated once:

    s = p + (A − I)(p − c) + t + d(p)        c = (13.5, 13.5), the image centre

    shift:    A = I,  t ~ U[−shift, shift]²
    affine:   A = R(θ) S H,  θ ~ U[−rotate, rotate] degrees,  S = diag(s_r, s_c), s_r, s_c ~ U[1 − scale,
              1 + scale],  H = [[1, k], [0, 1]], k ~ U[−shear, shear];  t as for shift
    elastic:  d = α G F Gᵀ per axis,  F ~ U[−1, 1]^(28×28),  G the Gaussian smoothing matrix of std σ
              (Simard, Steinkraus & Platt 2003, "Best practices for CNNs applied to visual document analysis")

A, t and d are drawn per image; A maps an output pixel's offset from the centre to the source
offset, so the image itself is transformed by A⁻¹ (the same distribution, as every range is
symmetric or nearly so). The displacement form makes zero strength exactly the identity: A − I,
t and d are then exact zeros, s = p lands on pixel centres, and the interpolation weights are 1 and 0.

Smoothing is two matrix products with G[i, j] = k(i − j), k a 1-D Gaussian kernel of sum 1, which
is a convolution with zero padding. Sampling gathers the four neighbours of every source coordinate
with ``take`` on flat indices into a zero-bordered copy of the batch, then interpolates along
columns and rows. Every step works on the whole batch at once: no per-image Python loop.

Random numbers come from ``DeviceRNG(be, seed, "augment")``: the draw named (*coords, 0) gives the
per-image parameters, (*coords, 1) the elastic fields, so every device draws the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gpumlp.backends.base import Backend
from gpumlp.backends.rng import DeviceRNG
from gpumlp.backends.warp import CENTRE, PAD, SIDE, Warp
from gpumlp.errors import ConfigError

KINDS = ("shift", "affine", "elastic")
KINDS_HELP = "choose none, shift, affine, elastic or a comma list such as affine,elastic"
STRENGTHS = {  # field → (CLI option, what it is, largest value that means something), for the checks
    "shift": ("--shift", "a translation in pixels, e.g. --shift 2", SIDE),
    "rotate": ("--rotate", "an angle in degrees, e.g. --rotate 10", 180),
    "scale": ("--scale", "a relative scaling below 1, e.g. --scale 0.1", 1),
    "shear": ("--shear", "a shear coefficient, e.g. --shear 0.1", 10),
    "alpha": ("--elastic-alpha", "a displacement intensity in pixels, e.g. --elastic-alpha 34", 1000),
    "sigma": ("--elastic-sigma", "a smoothing width in pixels, e.g. --elastic-sigma 4", 1000),
}
MIN_SIGMA = 0.01  # pixels: narrower smoothing is already the identity (and σ² must not underflow)


def parse_kinds(spec: str) -> tuple[str, ...]:
    """``"none"`` or ``""`` → (); ``"elastic,affine"`` → ("affine", "elastic"): deduplicated, in KINDS order."""
    s = str(spec).strip().lower()
    if s in ("", "none"):
        return ()
    names = [n.strip() for n in s.split(",")]
    for n in names:
        if n not in KINDS:
            raise ConfigError(f"unknown --augment {n!r}: {KINDS_HELP}")
    return tuple(k for k in KINDS if k in names)


@dataclass(frozen=True)
class AugmentConfig:
    kinds: tuple[str, ...] = ()  # () = off; any combination of KINDS (a string goes through parse_kinds)
    shift: float = 2.0  # max translation in pixels, uniform in [-shift, shift] per axis ("shift", "affine")
    rotate: float = 10.0  # max rotation in degrees, uniform in [-rotate, rotate] ("affine")
    scale: float = 0.1  # max relative scaling, factor uniform in [1-scale, 1+scale] per axis ("affine")
    shear: float = 0.1  # max shear coefficient, uniform in [-shear, shear] ("affine")
    alpha: float = 34.0  # elastic displacement intensity in pixels, Simard et al.'s α ("elastic")
    sigma: float = 4.0  # std in pixels of the Gaussian smoothing the random field ("elastic")

    def __post_init__(self):
        kinds = parse_kinds(self.kinds) if isinstance(self.kinds, str) else tuple(self.kinds)
        object.__setattr__(self, "kinds", parse_kinds(",".join(kinds)))  # validated, in KINDS order
        for field, (option, what, top) in STRENGTHS.items():
            value = getattr(self, field)
            if not value >= 0:  # also catches NaN
                raise ConfigError(f"{option} must be >= 0, got {value}: give {what}")
            if value > top and field != "scale":
                raise ConfigError(f"{option} must be at most {top}, got {value}: give {what}")
        if self.scale >= 1:
            raise ConfigError(f"--scale must be below 1, got {self.scale}: the factor 1 - scale must stay positive")
        if "elastic" in self.kinds and not self.sigma >= MIN_SIGMA:
            raise ConfigError(
                f"--elastic-sigma must be at least {MIN_SIGMA} for --augment elastic, got {self.sigma}: try 4"
            )


def gaussian_matrix(sigma: float, n: int = SIDE) -> np.ndarray:
    """(n, n) float64 host matrix G[i, j] = k(i − j): G @ f smooths the columns of f with the
    1-D Gaussian kernel k of std ``sigma`` (sum 1 over offsets −(n−1) … n−1), zero padded."""
    m = np.arange(-(n - 1), n)  # (2n − 1,) every offset i − j that occurs
    k = np.exp(-(m**2) / (2.0 * sigma**2))
    k /= k.sum()
    i = np.arange(n)
    return k[i[:, None] - i[None, :] + n - 1]  # (n, n) symmetric


class Augmenter:
    """``aug(X, epoch, batch)``: a randomly warped copy of the device batch X (b, 784), the same on every device."""

    def __init__(self, be: Backend, cfg: AugmentConfig, seed: int, dtype=np.float32):
        self.be, self.cfg = be, cfg
        self.dtype = dt = np.dtype(dtype).type
        self.rng = DeviceRNG(be, seed, "augment")
        p = np.arange(SIDE, dtype=dt)  # (28,) pixel coordinates
        self._row, self._col = be.asarray(p.reshape(1, SIDE, 1)), be.asarray(p.reshape(1, 1, SIDE))
        q = p - dt(CENTRE)  # (28,) offsets from the centre
        self._qrow, self._qcol = be.asarray(q.reshape(1, SIDE, 1)), be.asarray(q.reshape(1, 1, SIDE))
        self._eye = be.asarray(np.eye(2, dtype=dt))  # (2, 2)
        if "elastic" in cfg.kinds:  # constants of _elastic
            G = gaussian_matrix(cfg.sigma)  # (28, 28)
            g = G.sum(axis=1)  # (28,) G 1
            self._G = be.asarray((cfg.alpha * 2.0**-15 * G).astype(dt))  # (28, 28) α 2⁻¹⁵ G
            self._GT = be.asarray(G.T.astype(dt))  # (28, 28)
            self._E = be.asarray((cfg.alpha * np.outer(g, g)).astype(dt))  # (28, 28) α (G1)(G1)ᵀ

    def __call__(self, X, *coords: int):
        """X (b, 784) device images in [0, 1] → a new (b, 784) device array in [0, 1], a pure
        function of (X, seed, coords); coords name the draw (the training loop's epoch, batch)."""
        if not self.cfg.kinds:
            return X.astype(self.dtype)  # a copy, as promised
        return self.warp(X, self.draw(X.shape[0], *coords))

    def draw(self, b: int, *coords: int) -> Warp:
        """The random transforms of a batch of b images at ``coords``, on the device:
        ``reference_draw``, or on CUDA the same from two kernels and the smoothing products."""
        return self.be.augment_draw(self, b, coords)

    def reference_draw(self, b: int, *coords: int) -> Warp:
        """``draw`` in array operations."""
        cfg, dt = self.cfg, self.dtype
        A = t = D = None
        if "shift" in cfg.kinds or "affine" in cfg.kinds:
            V = self.rng.uniform((b, 6), *coords, 0, dtype=dt)  # (b, 6) in [0, 1)
            V *= dt(2)
            V -= dt(1)  # (b, 6) in [−1, 1)
            t = V[:, 0:2] * dt(cfg.shift)  # (b, 2)
            if "affine" in cfg.kinds:
                A = self._affine(V[:, 2:])
        if "elastic" in cfg.kinds:
            D = self._elastic(b, *coords)
        return Warp(A, t, D)

    def _elastic(self, b: int, *coords: int):
        """Simard et al.'s displacement α G F Gᵀ per image and axis (b, 2, 28, 28), F uniform in [−1, 1)."""
        xp = self.be.xp
        bits = self.rng.bits((b, SIDE, SIDE), *coords, 1)  # (b, 28, 28) uint32: 16 random bits per axis
        F = xp.empty((b, 2, SIDE, SIDE), dtype=self.dtype)
        F[:, 0] = bits >> 16  # (b, 28, 28) integers k in [0, 2¹⁶); u = k 2⁻¹⁶ is uniform in [0, 1)
        F[:, 1] = bits & np.uint32(0xFFFF)
        # With 2u − 1 = k 2⁻¹⁵ − 1 and smoothing linear, α G (2u − 1) Gᵀ = (α 2⁻¹⁵ G) k Gᵀ − α (G1)(G1)ᵀ:
        # the scale lives in the constant left factor, the mean in the constant (28, 28) matrix E.
        # Both products broadcast over the batch: many small products, which OpenBLAS runs on one
        # thread; the right one as a single (b·56, 28) @ (28, 28) product was 15× slower on a busy CPU.
        D = xp.matmul(xp.matmul(self._G, F), self._GT)  # (b, 2, 28, 28)
        D -= self._E
        return D

    def _affine(self, V):
        """V (b, 4) uniform in [−1, 1) → A = R(θ) S H (b, 2, 2), acting on (row, col)."""
        cfg, dt, b = self.cfg, self.dtype, V.shape[0]
        theta = V[:, 0] * dt(math.radians(cfg.rotate))  # (b,)
        cos, sin = self.be.xp.cos(theta), self.be.xp.sin(theta)
        s_r = V[:, 1] * dt(cfg.scale) + dt(1)  # (b,) row scale factor
        s_c = V[:, 2] * dt(cfg.scale) + dt(1)  # (b,) column scale factor
        k = V[:, 3] * dt(cfg.shear)  # (b,)
        A = self.be.xp.zeros((b, 2, 2), dtype=dt)  # R(θ) S H = [[cos −sin], [sin cos]] [[s_r s_r k], [0 s_c]]
        A[:, 0, 0] = cos * s_r
        A[:, 0, 1] = cos * s_r * k - sin * s_c
        A[:, 1, 0] = sin * s_r
        A[:, 1, 1] = sin * s_r * k + cos * s_c
        return A

    def warp(self, X, w: Warp):
        """X (b, 784) resampled at the source coordinates that ``w`` defines (b, 784), on the device:
        ``reference_warp``, or on CUDA the same in one kernel (``gpumlp.backends.kernels.WARP``)."""
        return self.be.warp_images(self, X, w)

    def reference_warp(self, X, w: Warp):
        """``warp`` in array operations: the source coordinates, then the bilinear resample."""
        row, col = self.source(w, X.shape[0])
        return self._bilinear(X, row, col)

    def source(self, w: Warp, b: int):
        """Source coordinates (row, col) of every output pixel, each broadcastable to (b, 28, 28):
        s = p + (A − I)(p − c) + t + d. Kept separable, (b, 28, 1) and (b, 1, 28), while they are."""
        row, col = self._row, self._col  # (1, 28, 1), (1, 1, 28): p
        if w.t is not None:
            row = row + w.t[:, 0].reshape(b, 1, 1)  # (b, 28, 1)
            col = col + w.t[:, 1].reshape(b, 1, 1)  # (b, 1, 28)
        if w.A is not None:
            M = (w.A - self._eye).reshape(b, 4, 1, 1)  # (b, 4, 1, 1) entries of A − I
            row = (row + M[:, 0] * self._qrow) + M[:, 1] * self._qcol  # (b, 28, 28)
            col = (col + M[:, 3] * self._qcol) + M[:, 2] * self._qrow  # (b, 28, 28)
        if w.D is not None:
            row = row + w.D[:, 0]  # (b, 28, 28)
            col = col + w.D[:, 1]
        return row, col

    def _bilinear(self, X, row, col):
        """X (b, 784) at source coordinates row, col (broadcastable to (b, 28, 28)) → (b, 784).
        Zeros outside the image: X sits in a zero border of 1 pixel before and 2 after; a coordinate
        clipped into [−1, 28] then has its four neighbours in the padded image, and any point beyond
        the image reads border zeros only."""
        xp, dt, b = self.be.xp, self.dtype, X.shape[0]
        P = xp.zeros((b, PAD, PAD), dtype=dt)  # (b, 31, 31)
        P[:, 1 : SIDE + 1, 1 : SIDE + 1] = X.reshape(b, SIDE, SIDE)
        P = P.reshape(-1)  # (b·31·31,) flat
        wr, wc = xp.clip(row, -1, SIDE), xp.clip(col, -1, SIDE)  # new arrays, clipped coordinates
        r0, c0 = xp.floor(wr), xp.floor(wc)  # top-left neighbour, in [−1, 28]
        wr -= r0  # in place: weight of the lower neighbours, in [0, 1)
        wc -= c0  # weight of the right neighbours
        i = (r0 * dt(PAD) + c0).astype(xp.int64)  # (b, 28, 28) exact small integers
        i += xp.arange(b, dtype=xp.int64).reshape(b, 1, 1) * (PAD * PAD) + (PAD + 1)  # + image's pixel (0, 0)
        # the four neighbours: the same indices into the flat array shifted by 0, 1, one row, one row + 1
        v00, v01, v10, v11 = (P[k:].take(i) for k in (0, 1, PAD, PAD + 1))  # each (b, 28, 28)
        v01 -= v00
        v01 *= wc
        v01 += v00  # top: v00 + wc (v01 − v00), exactly v00 when wc = 0
        v11 -= v10
        v11 *= wc
        v11 += v10  # bottom: v10 + wc (v11 − v10)
        v11 -= v01
        v11 *= wr
        v11 += v01  # top + wr (bottom − top)
        # Each a + w (b − a) with a, b in [0, 1] and w in [0, 1) rounds into [0, 1] (round to nearest),
        # so the result needs no clipping.
        return v11.reshape(b, SIDE * SIDE)
