"""The array backend: numpy on the CPU or CuPy on a CUDA GPU, chosen once from ``--device``.

Model and training code never import numpy or CuPy for device arrays; they receive a
``Backend`` and write ``be.xp.…``. Data crosses between host and device only through
``be.asarray`` (host → device) and ``be.to_numpy`` (device → host), so every transfer is
visible in one place. CuPy is imported only when a CUDA device is asked for.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from gpumlp.backends.blas import MKL_MIN_MNK, Blas, chosen, openblas_core
from gpumlp.scalars import const

DEVICE_HELP = "auto, cpu, cuda or cuda:N"
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
INSTALL_HINT = "pip install 'gpumlp[cuda12]' (CUDA 12) or pip install 'gpumlp[cuda13]' (CUDA 13)"


@dataclass(frozen=True)
class Backend:
    """A device and its array module. ``name`` is ``"cpu"`` or ``"cuda:N"``.

    Written once against ``self.xp``: this class is the readable reference for every operation.
    ``NumpyBackend`` and ``CupyBackend`` override only what they do faster (BLAS calls, fused
    kernels, synchronisation); a test backend (``tests/standins/fake_device.py``) overrides what it checks.
    """

    name: str
    xp: ModuleType
    device_id: int | None = None  # CUDA ordinal; None on the CPU
    note: str = ""  # why ``auto`` chose this device, empty otherwise

    compiles_kernels = False  # whether the first use of an operation compiles it (CuPy: NVRTC, CUB)
    captures_graphs = False  # whether ``capture`` records device work as one replayable launch (CuPy)
    # Shuffled images a training epoch gathers at once (25 MB of them): each gather is a launch on a
    # GPU, so fewer and bigger ones (``NumpyBackend`` takes fewer at a time, for its caches).
    gather_images = 8192
    tf32 = False  # whether float32 products may round their inputs to TF32 (gpumlp never lets them)

    @property
    def is_cuda(self) -> bool:
        return self.device_id is not None

    def activate(self):
        """A context in which every allocation and launch goes to this device (CuPy follows the
        thread's *current* device, not the arrays'): ``fit`` and the model enter it."""
        return contextlib.nullcontext()

    def asarray(self, a, dtype=None):
        """Host (or device) array → array on this device. The only way onto the device."""
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        """Device array → host numpy array. The only way back to the host (a sync point)."""
        return self.xp.asnumpy(a)

    def matmul_function(self):
        """``matmul(A, B, out=None)`` for every product of forward and backward (2-D A (m, k), B (k, n)),
        chosen once by the model."""
        return self.xp.matmul

    def layer_matmul_function(self, n_in: int, n_out: int):
        """``matmul(A, W)`` for the forward product of a layer W (n_in, n_out): a new (m, n_out) array.
        ``matmul_function``'s, unless the backend multiplies such a layer faster another way."""
        return self.matmul_function()

    def input_grad_function(self, n_in: int, n_out: int):
        """``dA(dZ, W)`` = dZ·Wᵀ, backward's input gradient (m, n_in) of a layer W (n_in, n_out), a new
        array. ``matmul_function``'s product, unless the backend has a faster way for such a layer."""
        mm = self.matmul_function()
        return lambda dZ, W: mm(dZ, W.T)

    def gemm(self, A, B, C, alpha: float = 1.0, beta: float = 0.0):
        """C ← α·A·B + β·C in place on this device (A (m, k), B (k, n), C (m, n); ``.T`` views are
        fine) and returns C, where ``matmul`` could only write A·B somewhere first. Here in two
        steps; the subclasses make it one BLAS call. Same result either way, up to rounding."""
        if beta == 0:
            self.matmul_function()(A, B, out=C)
            if alpha != 1:
                C *= alpha
        else:
            if beta != 1:
                C *= beta
            C += alpha * (A @ B)
        return C

    def axpby(self, alpha: float, x, beta: float, y):
        """y ← α·x + β·y in place (x, y contiguous, one shape) and returns y: the optimisers' update."""
        xp = self.xp
        if beta != 1:
            xp.multiply(y, const(xp, y.dtype, beta), out=y)
        if alpha == 1:
            return xp.add(y, x, out=y)
        return xp.add(y, xp.multiply(x, const(xp, x.dtype, alpha)), out=y)

    def axpby_chain(self, ops) -> None:
        """The updates ``ops``, ``[(α, x, β, y), …]`` over vectors of one length, in order: each
        y ← α·x + β·y as ``axpby`` computes it (an optimiser's step: Nesterov's is three)."""
        for alpha, x, beta, y in ops:
            self.axpby(alpha, x, beta, y)

    # -- the fused operations: several array operations here, one kernel on CuPy (gpumlp.backends.kernels)

    def bias_act(self, Z, b, act):
        """A = f(Z + b) for a hidden layer, overwriting the temporary Z (n, n_out); b (n_out,);
        ``act``: a ``gpumlp.model.Activation``."""
        self.xp.add(Z, b, out=Z)
        return act.f(self.xp, Z)

    def act_grad_mul(self, dA, H, act, M=None):
        """dZ = dA ⊙ f'(Z) from the layer's output H = f(Z), in dA's buffer (n, n_l); with dropout's
        multiplier M (n, n_l), dA ⊙ M ⊙ f'(Z)."""
        xp = self.xp
        if M is not None:
            dA *= M  # dropped units pass no gradient
        return xp.multiply(dA, act.grad(xp, H), out=dA)

    def loss_delta(self, Z, b, Y, loss, n: int, losses):
        """delta (n, k) of the output layer, the gradient of the *mean* loss w.r.t. Z + b: Z (n, k) the
        product A_L−1 W_L−1 *without* its bias b (k,) (a temporary, overwritten), Y (n, k) one-hot,
        ``loss`` a ``gpumlp.losses.Loss``. The batch's summed loss is added into ``losses`` (≥ n,), the
        epoch's device accumulator, of which only the sum is read: here the batch's total goes into
        losses[0]; CuPy's kernel adds each row's loss into losses[i] (one launch, no reduction)."""
        xp = self.xp
        xp.add(Z, b, out=Z)  # (n, k) output pre-activation Z_L
        total, delta = loss.total_and_delta(xp, Z, loss.output(xp, Z), Y)
        losses[0] += total  # one element: on numpy ~0.1 µs, where a 0-d array sum costs ~1 µs
        xp.divide(delta, const(xp, delta.dtype, n), out=delta)  # d mean / d Z_L = delta / n
        return delta

    def optimizer_step(self, opt, lr: float) -> None:
        """One update of ``opt``'s parameters (``gpumlp.optim.Optimizer``): its own readable rule."""
        opt.reference_step(lr)

    def augment_draw(self, aug, b: int, coords: tuple):
        """The random transforms (``gpumlp.training.augment.Warp``) of augmenter ``aug`` for a batch of b at
        ``coords``, on the device."""
        return aug.reference_draw(b, *coords)

    def warp_images(self, aug, X, w):
        """X (b, 784) resampled through the drawn transforms ``w`` (``gpumlp.training.augment.Warp``) of the
        augmenter ``aug``: a new (b, 784) array on the device."""
        return aug.reference_warp(X, w)

    def max_norm_(self, W, c: float):
        """Scale each column of W (n_in, n_out) in place to norm ≤ c: a unit's incoming weights."""
        xp = self.xp
        norms = xp.sqrt((W * W).sum(axis=0))  # (n_out,) ‖W[:, j]‖
        W *= xp.minimum(1.0, c / xp.maximum(norms, 1e-12))  # (n_in, n_out): each column scaled
        return W

    def dropout_mask(self, rng, shape, p: float, coords: tuple, dtype):
        """Inverted dropout's multiplier of ``shape`` and ``dtype`` on the device: 0 where a unit is
        dropped (probability p), 1/(1−p) where kept, from ``rng`` (``gpumlp.backends.rng.DeviceRNG``) at
        ``coords``: the same bits, so the same mask, on every device."""
        M = rng.keep_mask(shape, p, *coords).astype(dtype)  # 1 kept, 0 dropped
        M *= dtype(1 / (1 - p))
        return M

    def next_batch(self, X, Y, perm, pos, Xs, Ys) -> None:
        """Xs (b, 784), Ys (b, 10) ← the rows perm[pos : pos + b] of X (n, 784), Y (n, 10), then
        pos += b: the next batch of the epoch's order perm (n,), for a step captured on Xs, Ys
        (``--cuda-graph``). pos (1,) lives on the device, so the host never reads it. That is,
        ``Xs[...] = X.take(perm[pos : pos + b], axis=0)`` with pos a host integer."""
        rows = perm.take(pos + self.xp.arange(Xs.shape[0]))  # (b,) perm[pos : pos + b]
        X.take(rows, axis=0, out=Xs)
        Y.take(rows, axis=0, out=Ys)
        pos += Xs.shape[0]

    def synchronize(self) -> None:
        """Wait for queued device work; call before reading a clock."""

    def training_threads(self, recorded: int | None = None, largest: int | None = None) -> tuple[int | None, str]:
        """``(count, why)``: the CPU BLAS threads a training run uses (``gpumlp.backends.blas_threads``), ``recorded``
        being a resumed run's and ``largest`` its biggest product; ``(None, "")`` where the device
        does its own threading."""
        return None, ""

    def threads(self, n: int | None):
        """A context in which the BLAS uses ``n`` threads (None: as it is)."""
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


@dataclass(frozen=True, repr=False)
class NumpyBackend(Backend):
    """numpy on the CPU: the products and long updates go straight to BLAS (numpy's or MKL)."""

    library: Blas | None = None  # the BLAS it calls; None: the one GPUMLP_BLAS picks, found on first use
    # 0.8 MB of images, which stay in the core's cache until their batches are used (thread CPU time
    # against 8192, 25 MB: 784-10 at batch 10 +33%, 784-16-16-10 +10%, 784-100-10 at batch 128 +13%,
    # 784-300-100-50-10 ±0; 2026-11-27, a 2-core Xeon VM).
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

    def training_threads(self, recorded: int | None = None, largest: int | None = None) -> tuple[int | None, str]:
        from gpumlp.backends import blas_threads

        return blas_threads.training_threads(recorded, largest)

    def threads(self, n: int | None):
        from gpumlp.backends import blas_threads

        return blas_threads.threads(n, self.blas.name)


CPU = NumpyBackend("cpu", np)


def on_device(f):
    """Run ``f(model, …)`` inside ``model.be.activate()``: on cuda:N every allocation and kernel
    goes to that GPU, whatever device the calling thread had current."""

    @functools.wraps(f)
    def wrapper(model, *args, **kwargs):
        with model.be.activate():
            return f(model, *args, **kwargs)

    return wrapper


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
