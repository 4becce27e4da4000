"""The CuPy backend: a CUDA GPU, its probe, and the fused kernels of ``gpumlp.kernels``.

Imported only when a CUDA device is asked for (``gpumlp.device.get_backend``). Choosing a device
runs ``probe``: the libraries training will load (cuBLAS, NVRTC) and one tiny kernel, so that a
missing library or an unusable GPU is one line naming the fix, not a traceback in the first epoch.
"""

from __future__ import annotations

import importlib
import math

import numpy as np

from gpumlp import kernels
from gpumlp.backend import INSTALL_HINT, Backend
from gpumlp.errors import BackendUnavailable

LIBRARY_FIX = (
    f"install CuPy's CUDA libraries with {INSTALL_HINT} (they bring the ctk extra), "
    "or put a CUDA Toolkit's lib64 on LD_LIBRARY_PATH; or use --device cpu"
)
_KERNELS: dict = {}  # compiled ElementwiseKernels by their source (CuPy compiles per device on first use)
_MATMUL_FP32 = False  # whether cupy.matmul's float32 products are pinned to FP32 (select_precision)


class CupyBackend(Backend):
    """CuPy on one CUDA GPU. Every product is one cuBLAS gemm in full float32 or float64 precision
    (never TF32: see ``tf32``); the element-wise chains of the reference are one kernel each."""

    compiles_kernels = True
    captures_graphs = True  # ``capture``: a training step as one CUDA graph (gpumlp.graph, --cuda-graph)
    # gpumlp's one choice: float32 products are computed in float32, never rounded to TF32 (10-bit
    # mantissa) on the tensor cores, whatever CUPY_TF32 says: results then agree with the CPU's to
    # float32 rounding, and a checkpoint records what ran. ``select_precision`` applies it.
    tf32 = False

    def activate(self):
        return self.xp.cuda.Device(self.device_id)

    def asarray(self, a, dtype=None):
        with self.xp.cuda.Device(self.device_id):
            return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return self.xp.asnumpy(a)

    def matmul_function(self):
        """``cupy.matmul`` (one cuBLAS call, from Cython: less host time per call than ``gemm``'s
        Python) once ``select_precision`` has pinned its float32 compute type to FP32; else every
        product through ``gemm``, whose precision the cuBLAS handle's math mode decides."""
        if _MATMUL_FP32:
            return self.xp.matmul
        xp, gemm = self.xp, self.gemm

        def matmul(A, B, out=None):
            C = xp.empty((A.shape[0], B.shape[1]), dtype=A.dtype) if out is None else out
            return gemm(A, B, C, 1.0, 0.0)

        return matmul

    def gemm(self, A, B, C, alpha: float = 1.0, beta: float = 0.0):
        cublas = importlib.import_module("cupy.cublas")
        return cublas.gemm("N", "N", A, B, out=C, alpha=alpha, beta=beta)

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
        self._kernel(kernels.LOSSES[loss.name])(*flat, np.int32(Z.shape[1]), 1.0 / n, losses[: Z.shape[0]],
                                                delta.reshape(-1))  # fmt: skip
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
        from gpumlp.augment import SIDE, Warp

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
        Y = xp.empty((b, 784), dtype=X.dtype)
        if X.shape[1] != 784 or not X.flags.c_contiguous:
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
        from gpumlp.rng import keep_threshold

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
        cuda = self.xp.cuda
        while True:
            arena, stream = _Arena(cuda, nbytes), cuda.Stream(non_blocking=True)
            try:
                with stream, cuda.using_allocator(arena):
                    stream.begin_capture()
                    try:
                        record()
                    finally:
                        graph = stream.end_capture()  # ends a failed capture too
            except _ArenaFull:
                nbytes *= 4
                continue
            return _Captured(graph, arena)

    def _kernel(self, spec: tuple[str, str, str]):
        kernel = _KERNELS.get(spec)
        if kernel is None:
            name = f"gpumlp_k{len(_KERNELS)}"
            kernel = _KERNELS[spec] = self.xp.ElementwiseKernel(*spec, name=name)
        return kernel


class _Captured:
    """A ``cupy.cuda.Graph`` and the block its arrays were carved from (the graph holds no reference
    to its memory)."""

    def __init__(self, graph, arena):
        self.graph, self.arena = graph, arena

    def launch(self) -> None:
        self.graph.launch()  # on the current stream, queued after the work before it


class _ArenaFull(MemoryError):
    """A capture needed more than its block: ``CupyBackend.capture`` tries again with a bigger one."""


class _Arena:
    """A bump allocator for ``cupy.cuda.using_allocator``: each request gets the next bytes of one
    block reserved before capturing, never reused while the block lives (rounded to 512 bytes, as
    CuPy's pool rounds)."""

    def __init__(self, cuda, nbytes: int):
        self.block, self.size, self.used = cuda.alloc(nbytes), nbytes, 0

    def __call__(self, nbytes: int):
        start, self.used = self.used, self.used + -(-nbytes // 512) * 512
        if self.used > self.size:
            raise _ArenaFull(f"a captured step needs more than {self.size} bytes")
        return self.block + start


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def probe(cp, device_id: int) -> None:
    """Load and try what training uses on ``cuda:device_id``: cuBLAS (a handle and a 2×2 product),
    NVRTC (compiling one element-wise kernel) and a launch of it; then fix the products' precision.
    Raises ``BackendUnavailable`` naming the fix for the first that fails."""
    where = f"cuda:{device_id}"
    with cp.cuda.Device(device_id):
        try:
            cublas = importlib.import_module("cupy.cublas")
            handle = cp.cuda.device.get_cublas_handle()
        except Exception as e:  # ImportError "Failure finding libcublasLt.so.12", CUBLASError, …
            raise BackendUnavailable(f"CuPy cannot load cuBLAS on {where} ({_reason(e)}): {LIBRARY_FIX}") from e
        x = cp.asarray(np.array([1.0, 2.0], dtype=np.float32))
        try:
            y = cp.ElementwiseKernel(*kernels.PROBE, name="gpumlp_probe")(x)
            got_y = cp.asnumpy(y)  # a sync point: the launch has run
        except Exception as e:
            if "nvrtc" in str(e).lower():  # the run-time compiler CuPy builds every kernel with
                raise BackendUnavailable(
                    f"CuPy cannot compile kernels on {where}: NVRTC is missing ({_reason(e)}); {LIBRARY_FIX}"
                ) from e
            raise BackendUnavailable(
                f"a test kernel failed on {where} ({_reason(e)}): the NVIDIA driver may be older than the "
                f"CUDA {_runtime(cp)} that CuPy uses (nvidia-smi shows the driver's CUDA version; install "
                "the cupy-cudaXXx that matches it), or use --device cpu"
            ) from e
        try:
            A = cp.asarray(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32))
            C = cp.empty((2, 2), dtype=np.float32)
            cublas.gemm("N", "N", A, A, out=C)
            got_C = cp.asnumpy(C)
        except Exception as e:
            raise BackendUnavailable(f"cuBLAS failed on {where} ({_reason(e)}): {LIBRARY_FIX}") from e
        if not (np.array_equal(got_y, [3.0, 5.0]) and np.array_equal(got_C, [[7.0, 10.0], [15.0, 22.0]])):
            raise BackendUnavailable(
                f"{where} computed a test kernel wrongly ({got_y.tolist()}, {got_C.tolist()}): "
                "check the GPU and its driver with nvidia-smi, or use --device cpu"
            )
        select_precision(cp, cublas, handle)


def select_precision(cp, cublas, handle) -> None:
    """Full float32 for every product on this device (``CupyBackend.tf32``): the cuBLAS handle's
    math mode for ``cupy.cublas.gemm``, and CuPy's own compute type for the ``cupy.matmul`` that
    augmentation calls (otherwise TF32 when CUPY_TF32=1)."""
    libs = getattr(cublas, "cublas", None)  # cupy.cublas's binding of the library
    if libs is not None and hasattr(libs, "setMathMode"):
        libs.setMathMode(handle, getattr(libs, "CUBLAS_DEFAULT_MATH", 0))
    global _MATMUL_FP32
    try:
        linalg = importlib.import_module("cupy._core._routines_linalg")
        linalg.set_compute_type(np.dtype(np.float32), linalg.COMPUTE_TYPE_FP32)
        _MATMUL_FP32 = True
    except Exception:  # a CuPy without this (private) switch, or a stand-in: it honours CUPY_TF32,
        _MATMUL_FP32 = False  # so the products go through cupy.cublas.gemm (augmentation's stay TF32-able)


def _runtime(cp) -> str:
    try:
        v = cp.cuda.runtime.runtimeGetVersion()
    except Exception:
        return "runtime"
    return f"{v // 1000}.{v % 1000 // 10}"


def cuda_backend(cp, device_id: int) -> CupyBackend:
    """The backend of ``cuda:device_id`` after ``probe``; made the thread's current device too."""
    probe(cp, device_id)
    cp.cuda.Device(device_id).use()
    return CupyBackend(f"cuda:{device_id}", cp, device_id)
