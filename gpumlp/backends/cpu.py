"""The numpy backend: ``Backend`` on the CPU, whose products and long updates go straight to BLAS.

``NumpyBackend`` overrides only what its BLAS (``gpumlp.backends.blas``: numpy's OpenBLAS or Intel
MKL) does faster than numpy's operators: one gemm or axpby call, and, on OpenBLAS's AVX-512 kernel
sets, small-batch products cut into the pieces its small-matrix kernel takes. ``CPU`` is the one
instance training and the registry use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from gpumlp.backends.base import Backend
from gpumlp.backends.blas import MKL_MIN_MNK, Blas, chosen, openblas_core

# Vectors shorter than this are updated with numpy's operators rather than one BLAS call: below
# it the two take about as long (5–20 µs), and in a batch-10 training loop BLAS's call was slower.
AXPBY_BLAS_MIN = 1 << 17
# ``axpby_chain`` takes long vectors this many elements at a time (192 KiB of float32 per vector):
# small enough that a piece of each vector stays in a core's cache from one update to the next.
AXPBY_CHAIN_PIECE = 1 << 16
# OpenBLAS's kernel sets for AVX-512 x86 CPUs multiply "small" products, m·k·n ≤ 100³, with a kernel
# that skips packing the operands; a bigger batch-10 layer product is faster cut into such pieces
# (see ``NumpyBackend.layer_matmul_function``). Pieces narrower than SPLIT_MIN_COLS do not pay.
SMALL_KERNEL_CORES = ("skylakex", "cooperlake", "sapphirerapids")
SMALL_MNK = 100**3
SPLIT_MIN_COLS = 64
# The same kernel sets take a product dZ·Wᵀ (the input gradient) by the small kernel only while
# m·n_in ≤ SMALL_NT_OUT as well (measured at 10 and 32 rows: pieces of 120 rows of W at batch 10
# fast, 121 slow); below SPLIT_MIN_COLS rows or outputs, pieces do not pay.
SMALL_NT_OUT = 1200


@dataclass(frozen=True, repr=False)
class NumpyBackend(Backend):
    """numpy on the CPU: the products and long updates go straight to BLAS (numpy's or MKL)."""

    library: Blas | None = None  # the BLAS it calls; None: the one GPUMLP_BLAS picks, found on first use
    # 0.8 MB of images, which stay in the core's cache until their batches are used.
    # Measured: docs/speed.md#gather-chunk-on-the-cpu
    gather_images = 256

    @functools.cached_property
    def blas(self) -> Blas:
        """The CPU BLAS this backend owns (``gpumlp.backends.blas.Blas``)."""
        return self.library if self.library is not None else chosen()

    def asarray(self, a, dtype=None):
        return np.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def matmul_function(self):
        """``np.matmul``, except with Intel MKL installed (``gpumlp.backends.blas``), where the big products
        (m·n·k ≥ ``MKL_MIN_MNK``) go through MKL's gemm, up to 2× faster. Without MKL the
        products pay nothing for the choice."""
        if not self.blas.serves_products:
            return np.matmul

        def matmul(A, B, out=None, gemm=self.blas.gemm, big=MKL_MIN_MNK):
            if A.shape[0] * A.shape[1] * B.shape[1] >= big and (out is None or not _overlap(out, A, B)):
                C = np.empty((A.shape[0], B.shape[1]), A.dtype) if out is None else out
                if gemm(A, B, C, 1.0, 0.0):
                    return C
            return np.matmul(A, B, out=out)  # numpy also copes with an out that overlaps A or B

        return matmul

    def layer_matmul_function(self, n_in: int, n_out: int):
        """On OpenBLAS's AVX-512 kernels running on one thread, for a layer that a small batch can
        make just too big for the small-matrix kernel (m·n_in·n_out > ``SMALL_MNK``): the product
        cut into column pieces that each fit it, ``A @ W[:, j:j+w]`` into ``Z[:, j:j+w]``. A batch-10
        784×300 first layer takes 86 → 55 µs on one thread (the whole product packs all of W first;
        the pieces read it in place). On two threads one product is faster (the pieces run on one),
        so the count is read on each call. Each piece rounds as the small kernel does, so the result
        can differ from one product in the last bits. Other layers, bigger batches and other BLAS:
        ``matmul_function``'s."""
        mm, threads = self.matmul_function(), _openblas_threads()
        if mm is not np.matmul or n_out < 2 * SPLIT_MIN_COLS or threads is None:
            return mm
        if openblas_core() not in SMALL_KERNEL_CORES:
            return mm

        def matmul(A, W):
            return _columns_matmul(A, W) if threads() == 1 else np.matmul(A, W)

        return matmul

    def input_grad_function(self, n_in: int, n_out: int):
        """On OpenBLAS's AVX-512 kernels on one thread, dZ·Wᵀ for a small batch in pieces of rows of
        W that the small-matrix kernel takes (m·w ≤ ``SMALL_NT_OUT`` and m·n_out·w ≤ ``SMALL_MNK``),
        each into its columns of dA: at batch 10, 300×100 20 → 12 µs, 512×512 157 → 61 µs,
        1024×1024 768 → 319 µs (one product copies all of W into its packed layout on every call).
        Layers with fewer than ``SPLIT_MIN_COLS`` outputs, batches of more than 18 (pieces of fewer
        than 64 rows) and two threads keep one product. Last bits can differ from one product's."""
        mm, threads = self.matmul_function(), _openblas_threads()
        if mm is not np.matmul or n_out < SPLIT_MIN_COLS or threads is None:
            return super().input_grad_function(n_in, n_out)
        if openblas_core() not in SMALL_KERNEL_CORES:
            return super().input_grad_function(n_in, n_out)

        def dA(dZ, W):
            return _rows_input_grad(dZ, W) if threads() == 1 else np.matmul(dZ, W.T)

        return dA

    def gemm(self, A, B, C, alpha: float = 1.0, beta: float = 0.0):
        if self.blas.gemm(A, B, C, alpha, beta):  # numpy's BLAS or MKL, one call
            return C
        return super().gemm(A, B, C, alpha, beta)  # a BLAS gpumlp cannot reach

    def axpby(self, alpha: float, x, beta: float, y):
        """On long vectors one multi-threaded BLAS pass, where numpy's operators take two
        single-threaded passes and a temporary."""
        if y.size >= AXPBY_BLAS_MIN and self.blas.axpby(alpha, x, beta, y):
            return y
        return super().axpby(alpha, x, beta, y)

    def axpby_chain(self, ops) -> None:
        """On long vectors, every update a piece at a time (``AXPBY_CHAIN_PIECE`` elements) before
        the next piece, so each piece is read from memory once rather than once per update: Nesterov's
        step of 784-512-10 (three updates of 1.6 MB vectors) 345 → 270 µs. BLAS's axpby computes each
        element alike wherever a piece starts (one fused multiply-add), so the result is the same
        bit for bit as whole-vector calls."""
        axpby, (n, dtype) = self.blas.axpby, (ops[0][3].size, ops[0][3].dtype)
        alike = all(x.dtype == y.dtype == dtype and x.flags.c_contiguous and y.flags.c_contiguous for _, x, _, y in ops)
        alpha, x, beta, y = ops[0]
        if n < AXPBY_BLAS_MIN or not alike or not axpby(alpha, x[:AXPBY_CHAIN_PIECE], beta, y[:AXPBY_CHAIN_PIECE]):
            return super().axpby_chain(ops)  # short vectors, or a dtype or layout the BLAS does not take
        for i in range(0, n, AXPBY_CHAIN_PIECE):
            j = i + AXPBY_CHAIN_PIECE
            for alpha, x, beta, y in ops[1:] if i == 0 else ops:  # (the first piece's first update is done)
                axpby(alpha, x[i:j], beta, y[i:j])
        return None

    def training_threads(
        self,
        recorded: int | None = None,
        largest: int | None = None,
        forced: int | None = None,
        forced_by: str = "--threads",
    ) -> tuple[int | None, str]:
        from gpumlp.backends import blas_threads

        return blas_threads.training_threads(recorded, largest, forced, forced_by)

    def threads(self, n: int | None):
        from gpumlp.backends import blas_threads

        return blas_threads.threads(n, self.blas.name)


CPU = NumpyBackend("cpu", np)


def _openblas_threads():
    """A function → numpy's OpenBLAS's thread count now (one C call), or None where unreachable."""
    from gpumlp.backends.blas_threads import openblas_threads_getter

    return openblas_threads_getter()


def _columns_matmul(A, W):
    """A (m, k) @ W (k, n) → a new (m, n) array, in column pieces of m·k·w ≤ ``SMALL_MNK`` when
    such pieces are at least ``SPLIT_MIN_COLS`` wide and one product would be bigger."""
    (m, k), n = A.shape, W.shape[1]
    cols = SMALL_MNK // max(m * k, 1)  # the widest piece the small-matrix kernel takes
    if cols < SPLIT_MIN_COLS or m * k * n <= SMALL_MNK:
        return np.matmul(A, W)
    pieces = -(-n // cols)
    width = -(-n // pieces)  # pieces of one width: 300 columns → 3 × 100
    Z = np.empty((m, n), dtype=np.result_type(A, W))
    for j in range(0, n, width):
        np.matmul(A, W[:, j : j + width], out=Z[:, j : j + width])
    return Z


def _rows_input_grad(dZ, W):
    """dZ (m, n) · W (k, n)ᵀ → a new (m, k) array, in pieces of w rows of W (m·w ≤ ``SMALL_NT_OUT``,
    m·n·w ≤ ``SMALL_MNK``, w ≥ ``SPLIT_MIN_COLS``) when the whole would miss the small kernel."""
    (m, n), k = dZ.shape, W.shape[0]
    rows = min(SMALL_NT_OUT // max(m, 1), SMALL_MNK // max(m * n, 1))  # the most rows a piece may have
    if rows < SPLIT_MIN_COLS or rows >= k:
        return np.matmul(dZ, W.T)
    pieces = -(-k // rows)
    width = -(-k // pieces)  # pieces of one width: 300 rows at batch 10 → 3 × 100
    dA = np.empty((m, k), dtype=np.result_type(dZ, W))
    for j in range(0, k, width):
        np.matmul(dZ, W[j : j + width].T, out=dA[:, j : j + width])
    return dA


def _overlap(out, A, B) -> bool:
    """Whether ``out`` may share memory with A or B: gemm would overwrite C while still reading them."""
    return np.may_share_memory(out, A) or np.may_share_memory(out, B)
