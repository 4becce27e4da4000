"""The array backend: numpy on the CPU (``gpumlp.backends.cpu``) or CuPy on a CUDA GPU
(``gpumlp.backends.cuda``), chosen once from ``--device``.

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

from gpumlp.scalars import const

DEVICE_HELP = "auto, cpu, cuda or cuda:N"
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
        """The random transforms (``gpumlp.backends.warp.Warp``) of augmenter ``aug`` for a batch of b at
        ``coords``, on the device."""
        return aug.reference_draw(b, *coords)

    def warp_images(self, aug, X, w):
        """X (b, 784) resampled through the drawn transforms ``w`` (``gpumlp.backends.warp.Warp``) of the
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

    def training_threads(
        self,
        recorded: int | None = None,
        largest: int | None = None,
        forced: int | None = None,
        forced_by: str = "--threads",
    ) -> tuple[int | None, str]:
        """``(count, why)``: the CPU BLAS threads a training run uses (``gpumlp.backends.blas_threads``), ``recorded``
        being a resumed run's, ``largest`` its biggest product and ``forced`` the count asked for (by
        ``forced_by``); ``(None, "")`` where the device does its own threading."""
        return None, ""

    def threads(self, n: int | None):
        """A context in which the BLAS uses ``n`` threads (None: as it is)."""
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


def on_device(f):
    """Run ``f(model, …)`` inside ``model.be.activate()``: on cuda:N every allocation and kernel
    goes to that GPU, whatever device the calling thread had current."""

    @functools.wraps(f)
    def wrapper(model, *args, **kwargs):
        with model.be.activate():
            return f(model, *args, **kwargs)

    return wrapper
