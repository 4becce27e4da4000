"""The CuPy backend: a CUDA GPU and the fused kernels of ``gpumlp.backends.kernels``.

Imported only when a CUDA device is asked for (``gpumlp.backends.registry.get_backend``). Choosing a
device runs ``gpumlp.backends.probe.probe`` first; the products go through cuBLAS called directly
(``gpumlp.backends.cublas``) where the probe found that usable, and a captured step's memory comes
from ``gpumlp.backends.capture``.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import numpy as np

from gpumlp.backends import capture, cublas, kernels
from gpumlp.backends.base import Backend
from gpumlp.backends.probe import probe
from gpumlp.backends.warp import PIXELS, SIDE, Warp

_KERNELS: dict = {}  # compiled ElementwiseKernels by their source (CuPy compiles per device on first use)


@dataclass(frozen=True)
class CupyBackend(Backend):
    """CuPy on one CUDA GPU. Every product is one cuBLAS gemm in full float32 or float64 precision
    (never TF32: see ``tf32``); the element-wise chains of the reference are one kernel each."""

    # The probe's verdict on calling cuBLAS directly (``cublas.raw_gemm``): None, and every product goes
    # through it, which a CUDA graph can capture; else why not, and the products are CuPy's, which
    # refuses cuBLAS while a stream captures (so no graphs: ``--cuda-graph`` says this reason).
    graph_unavailable: str | None = None

    compiles_kernels = True
    # gpumlp's one choice: float32 products are computed in float32, never rounded to TF32 (10-bit
    # mantissa) on the tensor cores, whatever CUPY_TF32 says: results then agree with the CPU's to
    # float32 rounding, and a checkpoint records what ran. ``select_precision`` applies it.
    tf32 = False

    @property
    def captures_graphs(self) -> bool:  # ``capture``: a training step as one CUDA graph (gpumlp.backends.graph)
        return self.graph_unavailable is None

    def activate(self):
        return self.xp.cuda.Device(self.device_id)

    def asarray(self, a, dtype=None):
        with self.xp.cuda.Device(self.device_id):
            return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return self.xp.asnumpy(a)

    def matmul_function(self):
        """Every product through ``cublas.raw_gemm`` where the probe found it usable (the same cuBLAS
        routine captured or not). Else ``cupy.matmul`` (one cuBLAS call, from Cython) once
        ``select_precision`` has pinned its float32 compute type to FP32, or else through ``gemm``,
        whose precision the cuBLAS handle's math mode decides."""
        if self.graph_unavailable is None:
            xp = self.xp

            def raw_matmul(A, B, out=None):
                C = xp.empty((A.shape[0], B.shape[1]), dtype=A.dtype) if out is None else out  # (m, n)
                return cublas.raw_gemm(xp, A, B, C, 1.0, 0.0)

            return raw_matmul
        if cublas.matmul_fp32:
            return self.xp.matmul
        xp, gemm = self.xp, self.gemm

        def matmul(A, B, out=None):
            C = xp.empty((A.shape[0], B.shape[1]), dtype=A.dtype) if out is None else out
            return gemm(A, B, C, 1.0, 0.0)

        return matmul

    def gemm(self, A, B, C, alpha: float = 1.0, beta: float = 0.0):
        if self.graph_unavailable is None:
            return cublas.raw_gemm(self.xp, A, B, C, alpha, beta)
        cupy_cublas = importlib.import_module("cupy.cublas")
        return cupy_cublas.gemm("N", "N", A, B, out=C, alpha=alpha, beta=beta)

    def axpby(self, alpha: float, x, beta: float, y):
        return self._kernel(kernels.AXPBY)(x, alpha, beta, y)

    def bias_act(self, Z, b, act):
        return self._kernel(kernels.activation_kernel(kernels.BIAS_ACT, act))(b, Z)

    def act_grad_mul(self, dA, H, act, M=None):
        if M is None:
            return self._kernel(kernels.activation_kernel(kernels.ACT_GRAD, act))(H, dA)
        return self._kernel(kernels.activation_kernel(kernels.ACT_GRAD_MASKED, act))(H, M, dA)

    def loss_delta(self, Z, b, Y, loss, n: int, losses):
        if not (Z.flags.c_contiguous and Y.flags.c_contiguous and b.flags.c_contiguous):
            return super().loss_delta(Z, b, Y, loss, n, losses)  # the kernel indexes rows of contiguous arrays
        delta = self.xp.empty_like(Z)  # (n, k)
        flat = (Z.reshape(-1), b, Y.reshape(-1))  # views: the kernel indexes i·k + j
        # Each row's loss is added into losses[i] (n,): no sum per step, the epoch sums once.
        self._kernel(loss.cuda)(*flat, np.int32(Z.shape[1]), 1.0 / n, losses[: Z.shape[0]], delta.reshape(-1))
        return delta  # (n, k)

    def optimizer_step(self, opt, lr: float) -> None:
        """The weight decay and the rule of ``opt`` in one kernel per span of θ (one span unless
        SGD steps some weight matrices inside backward)."""
        k, scalars = self._kernel(opt.cuda), opt.kernel_scalars(lr)
        # A rule with state buffers is never fused (only SGD is), so its one span is all of θ.
        buffers = [opt.state_buffers[name] for name in opt.buffers]
        for theta, grad, wd in opt.decay_spans():
            k(grad, wd, *scalars, theta, *buffers)

    def augment_draw(self, aug, b: int, coords: tuple):
        xp, cfg, dt, kinds = self.xp, aug.cfg, aug.dtype, aug.cfg.kinds
        A = t = D = None
        if "shift" in kinds or "affine" in kinds:
            t, v0 = xp.empty((b, 2), dtype=dt), xp.empty((b,), dtype=dt)
            A = xp.empty((b, 2, 2), dtype=dt) if "affine" in kinds else None
            knobs = (dt(cfg.shift), dt(math.radians(cfg.rotate)), dt(cfg.scale), dt(cfg.shear))
            a = A if A is not None else v0  # (not written without affine)
            self._kernel(kernels.AFFINE_DRAW)(aug.rng.base(6 * b), aug.rng.draw_key(*coords, 0), *knobs,
                                              np.int32(A is not None), v0, t, a)  # fmt: skip
        if "elastic" in kinds:
            F = xp.empty((b, 2, SIDE, SIDE), dtype=dt)
            self._kernel(kernels.ELASTIC_FIELD)(aug.rng.base(b * SIDE * SIDE), aug.rng.draw_key(*coords, 1), F)
            D = xp.matmul(xp.matmul(aug._G, F), aug._GT)  # (b, 2, 28, 28), as Augmenter._elastic
            D -= aug._E
        return Warp(A, t, D)

    def warp_images(self, aug, X, w):
        xp, b = self.xp, X.shape[0]
        Y = xp.empty((b, PIXELS), dtype=X.dtype)
        if X.shape[1] != PIXELS or not X.flags.c_contiguous:
            return super().warp_images(aug, X, w)
        none = xp.empty((1,), dtype=X.dtype)  # stands for a part that is off (never read)
        parts = [none if v is None else v.reshape(-1) for v in (w.A, w.t, w.D)]
        flags = [np.int32(v is not None) for v in (w.A, w.t, w.D)]
        self._kernel(kernels.WARP)(X.reshape(-1), *parts, *flags, Y)
        return Y

    def next_batch(self, X, Y, perm, pos, Xs, Ys) -> None:
        if not all(a.flags.c_contiguous for a in (X, Y, Ys)):
            return super().next_batch(X, Y, perm, pos, Xs, Ys)  # the kernel indexes rows of contiguous arrays
        d, k = np.int32(X.shape[1]), np.int32(Y.shape[1])
        self._kernel(kernels.GATHER_BATCH)(X.reshape(-1), Y.reshape(-1), perm, pos, d, k, Xs, Ys.reshape(-1))
        self._kernel(kernels.ADVANCE)(np.int32(Xs.shape[0]), pos)  # one thread, after the gather has read pos
        return None

    def max_norm_(self, W, c: float):
        rows, cols = W.shape
        norms = self.xp.empty((cols,), dtype=W.dtype)  # (n_out,) written by the kernel, not needed after
        self._kernel(kernels.MAX_NORM)(np.int32(rows), np.int32(cols), c, norms, W.reshape(-1))
        return W

    def dropout_mask(self, rng, shape, p: float, coords: tuple, dtype):
        from gpumlp.backends.rng import keep_threshold

        M = self.xp.empty(shape, dtype=dtype)
        base = rng.base(M.size).reshape(shape)  # (a view: cached per size)
        self._kernel(kernels.DROPOUT_MASK)(base, rng.draw_key(*coords), keep_threshold(p), dtype(1 / (1 - p)), M)
        return M

    def synchronize(self) -> None:
        self.xp.cuda.Device(self.device_id).synchronize()

    def capture(self, record, nbytes: int):
        """The device work of ``record()`` as a CUDA graph, whose ``launch()`` replays it on the
        current stream; captured on a stream of its own: nothing runs now. Every array
        ``record`` creates is carved from one block of ``nbytes`` reserved first (a bigger one if
        that is too small), so no memory is allocated while capturing, and none that the graph uses
        goes back to CuPy's pool for other arrays while the graph lives (its arrays hold the block)."""
        return capture.capture(self.xp.cuda, record, nbytes)

    def _kernel(self, spec: tuple[str, str, str]):
        kernel = _KERNELS.get(spec)
        if kernel is None:
            name = f"gpumlp_k{len(_KERNELS)}"
            kernel = _KERNELS[spec] = self.xp.ElementwiseKernel(*spec, name=name)
        return kernel


def cuda_backend(cp, device_id: int) -> CupyBackend:
    """The backend of ``cuda:device_id`` after ``probe``; made the thread's current device too."""
    graph_unavailable = probe(cp, device_id)
    cp.cuda.Device(device_id).use()
    return CupyBackend(f"cuda:{device_id}", cp, device_id, graph_unavailable=graph_unavailable)
