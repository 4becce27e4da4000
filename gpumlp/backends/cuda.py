"""The CuPy backend: a CUDA GPU, its probe, and the fused kernels of ``gpumlp.backends.kernels``.

Imported only when a CUDA device is asked for (``gpumlp.backends.registry.get_backend``). Choosing a device
runs ``probe``: the libraries training will load (cuBLAS, NVRTC) and one tiny kernel, so that a
missing library or an unusable GPU is one line naming the fix, not a traceback in the first epoch.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import math
from dataclasses import dataclass

import numpy as np

from gpumlp.backends import kernels
from gpumlp.backends.base import INSTALL_HINT, Backend
from gpumlp.errors import BackendUnavailable

LIBRARY_FIX = (
    f"install CuPy's CUDA libraries with {INSTALL_HINT} (they bring the ctk extra), "
    "or put a CUDA Toolkit's lib64 on LD_LIBRARY_PATH; or use --device cpu"
)
_KERNELS: dict = {}  # compiled ElementwiseKernels by their source (CuPy compiles per device on first use)
_MATMUL_FP32 = False  # whether cupy.matmul's float32 products are pinned to FP32 (select_precision)
# cuBLAS, called directly (``_raw_gemm``): CuPy refuses its own cuBLAS calls while a stream captures.
CUBLAS_SONAMES = ("libcublas.so.13", "libcublas.so.12")  # tried when no libcublas is mapped yet
MAPS = "/proc/self/maps"  # where the process's loaded libraries are listed (Linux)
CUBLAS_WORKSPACE = 32 << 20  # bytes of a workspace of gpumlp's own for cuBLAS (NVIDIA's advice for Hopper)
_LIB = None  # the loaded ``_Cublas``
_WORKSPACES: dict = {}  # cuBLAS handle → its workspace block (cupy.cuda.alloc), kept for the process
CUBLAS_STATUS = {1: "NOT_INITIALIZED", 3: "ALLOC_FAILED", 7: "INVALID_VALUE", 8: "ARCH_MISMATCH", 11: "MAPPING_ERROR",
                 13: "EXECUTION_FAILED", 14: "INTERNAL_ERROR", 15: "NOT_SUPPORTED", 16: "LICENSE_ERROR"}  # fmt: skip


@dataclass(frozen=True)
class CupyBackend(Backend):
    """CuPy on one CUDA GPU. Every product is one cuBLAS gemm in full float32 or float64 precision
    (never TF32: see ``tf32``); the element-wise chains of the reference are one kernel each."""

    # The probe's verdict on calling cuBLAS directly (``_raw_gemm``): None, and every product goes
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
        """Every product through ``_raw_gemm`` where the probe found it usable (the same cuBLAS
        routine captured or not). Else ``cupy.matmul`` (one cuBLAS call, from Cython) once
        ``select_precision`` has pinned its float32 compute type to FP32, or else through ``gemm``,
        whose precision the cuBLAS handle's math mode decides."""
        if self.graph_unavailable is None:
            xp = self.xp

            def raw_matmul(A, B, out=None):
                C = xp.empty((A.shape[0], B.shape[1]), dtype=A.dtype) if out is None else out  # (m, n)
                return _raw_gemm(xp, A, B, C, 1.0, 0.0)

            return raw_matmul
        if _MATMUL_FP32:
            return self.xp.matmul
        xp, gemm = self.xp, self.gemm

        def matmul(A, B, out=None):
            C = xp.empty((A.shape[0], B.shape[1]), dtype=A.dtype) if out is None else out
            return gemm(A, B, C, 1.0, 0.0)

        return matmul

    def gemm(self, A, B, C, alpha: float = 1.0, beta: float = 0.0):
        if self.graph_unavailable is None:
            return _raw_gemm(self.xp, A, B, C, alpha, beta)
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
        from gpumlp.training.augment import SIDE, Warp

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
        cuda = self.xp.cuda
        while True:
            arena, stream = _Arena(cuda, nbytes), cuda.Stream(non_blocking=True)
            try:
                with stream, cuda.using_allocator(arena):
                    stream.begin_capture()
                    try:
                        record()
                    except BaseException:  # end the capture, but say why record() failed: ending
                        with contextlib.suppress(Exception):  # raises too (cudaErrorStreamCaptureInvalidated)
                            stream.end_capture()
                        raise
                    graph = stream.end_capture()
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


class _Cublas:
    """The cuBLAS entry points ``_raw_gemm`` calls through ctypes, from one loaded libcublas."""

    def __init__(self, lib):
        vp, i = ctypes.c_void_p, ctypes.c_int
        self.set_stream = _entry(lib, "cublasSetStream_v2", vp, vp)
        self.set_workspace = _entry(lib, "cublasSetWorkspace_v2", vp, vp, ctypes.c_size_t)
        self.set_pointer_mode = _entry(lib, "cublasSetPointerMode_v2", vp, i)
        self.gemm = {}  # dtype.char → (its gemm, its scalar type, its name)
        for char, name, scalar in (("f", "cublasSgemm_v2", ctypes.c_float), ("d", "cublasDgemm_v2", ctypes.c_double)):
            p = ctypes.POINTER(scalar)
            self.gemm[char] = (_entry(lib, name, vp, i, i, i, i, i, p, vp, i, vp, i, p, vp, i), scalar, name)


def _entry(lib, name: str, *argtypes):
    f = getattr(lib, name)  # AttributeError: a library without it
    f.argtypes, f.restype = argtypes, ctypes.c_int
    return f


def _find_cublas() -> _Cublas:
    """The libcublas CuPy has loaded (its handles are valid only there): found in the process's
    memory map, else by its usual names. Raises OSError or AttributeError (a symbol missing)."""
    try:
        with open(MAPS) as f:
            mapped = [line.split(None, 5)[5].strip() for line in f if "/libcublas.so" in line]
    except (OSError, IndexError):
        mapped = []
    tried = []
    for name in dict.fromkeys([*mapped, *CUBLAS_SONAMES]):
        try:
            return _Cublas(ctypes.CDLL(name))
        except OSError as e:
            tried.append(_reason(e))
    raise OSError(f"no libcublas could be loaded ({'; '.join(tried)})")


def _cublas() -> _Cublas:
    global _LIB
    if _LIB is None:
        _LIB = _find_cublas()
    return _LIB


def _operand(xp, X) -> tuple[int, int, object]:
    """``(op, ld, X)`` of a row-major operand X (r, c) in cuBLAS's column-major view: C-contiguous,
    it is Xᵀ with leading dimension c (CUBLAS_OP_N = 0 on Xᵀ); F-contiguous (a ``.T``), X with r
    (CUBLAS_OP_T = 1). Any other strides: a contiguous copy first."""
    if X.flags.c_contiguous:
        return 0, max(X.shape[1], 1), X
    if X.flags.f_contiguous:
        return 1, max(X.shape[0], 1), X
    X = xp.ascontiguousarray(X)
    return 0, max(X.shape[1], 1), X


def _raw_gemm(xp, A, B, C, alpha: float, beta: float):
    """C ← α·A·B + β·C by one cuBLAS gemm on the *current* stream, called directly, not through
    CuPy (whose ``setStream`` refuses any cuBLAS call while a stream captures), so a CUDA graph can
    capture it. A (m, k), B (k, n), C (m, n) of one dtype (float32: sgemm, float64: dgemm) on the
    device; A, B C- or F-contiguous (``.T`` views, views with an offset fine). Returns C.

    cuBLAS is column-major: the row-major C is Cᵀ there, so it computes Cᵀ = Bᵀ·Aᵀ. Before each
    gemm the handle's stream is set to the current one, then its workspace to gpumlp's own
    (setting a stream resets cuBLAS to its own pool, which would allocate inside a capture), then
    the pointer mode to host (α and β are read at the call, and a graph keeps those values)."""
    (m, k), n = A.shape, B.shape[1]
    if not (A.dtype == B.dtype == C.dtype and C.dtype.char in "fd"):
        raise TypeError(f"gemm of {A.dtype}, {B.dtype} into {C.dtype}: one dtype, float32 or float64")
    if m == 0 or n == 0:
        return C
    if k == 0:  # BLAS's rule: C ← β·C
        if beta == 0:
            C[...] = 0
        elif beta != 1:
            C *= beta
        return C
    if not C.flags.c_contiguous:  # through a contiguous copy (gpumlp's products never need one)
        T = xp.ascontiguousarray(C)
        C[...] = _raw_gemm(xp, A, B, T, alpha, beta)
        return C
    lib = _LIB or _cublas()
    gemm, scalar, name = lib.gemm[C.dtype.char]
    op_a, lda, A = _operand(xp, A)
    op_b, ldb, B = _operand(xp, B)
    h = xp.cuda.device.get_cublas_handle()
    ws = _WORKSPACES.get(h)
    if ws is None:  # once per handle, on first use (the probe's, or an uncaptured step's)
        ws = _WORKSPACES[h] = xp.cuda.alloc(CUBLAS_WORKSPACE)
    a, b = scalar(alpha), scalar(beta)
    _check(lib.set_stream(h, xp.cuda.get_current_stream().ptr), "cublasSetStream_v2")
    _check(lib.set_workspace(h, ws.ptr, CUBLAS_WORKSPACE), "cublasSetWorkspace_v2")
    _check(lib.set_pointer_mode(h, 0), "cublasSetPointerMode_v2")  # CUBLAS_POINTER_MODE_HOST
    _check(gemm(h, op_b, op_a, n, m, k, ctypes.byref(a), B.data.ptr, ldb, A.data.ptr, lda, ctypes.byref(b),
                C.data.ptr, n), name)  # fmt: skip
    return C


def _check(status: int, name: str) -> None:
    if status:
        what = f"CUBLAS_STATUS_{CUBLAS_STATUS.get(status, 'UNKNOWN')} ({status})"
        raise BackendUnavailable(
            f"cuBLAS's {name} failed on the GPU: {what}; check the GPU with nvidia-smi, or use --device cpu"
        )


def _check_raw_products(cp) -> str | None:
    """Why ``_raw_gemm`` cannot do training's products on the current device, or None: small
    exact products (NN, NT with B = Wᵀ, TN with A = Xᵀ, β = 1 accumulation, operands that are
    views at an offset), float32 and float64, against numpy's. Its first call sets up the
    handle's workspace, so none is made while a stream captures."""
    try:
        for dtype in (np.float32, np.float64):
            flat = np.arange(1.0, 25.0, dtype=dtype)  # small integers: every product is exact
            A, W, X = flat[1:7].reshape(2, 3), flat[7:13].reshape(2, 3), flat[13:19].reshape(3, 2)
            B, C0 = flat[18:24].reshape(3, 2), np.array([[1.0, -2.0], [3.0, 0.5]], dtype=dtype)
            d = cp.asarray(flat)
            dA, dW, dX, dB = d[1:7].reshape(2, 3), d[7:13].reshape(2, 3), d[13:19].reshape(3, 2), d[18:24].reshape(3, 2)
            cases = [  # (A, B, α, β, C before, expected)
                (dA, dB, 1.0, 0.0, None, A @ B),  # NN
                (dA, dW.T, 1.0, 0.0, None, A @ W.T),  # NT: dA = dZ·Wᵀ
                (dX.T, dB, 1.0, 0.0, None, X.T @ B),  # TN: dW = Aᵀ·dZ
                (dX.T, dB, -0.5, 1.0, C0, C0 - 0.5 * (X.T @ B)),  # SGD's step inside backward
            ]
            for Ad, Bd, alpha, beta, before, want in cases:
                C = cp.asarray(before) if before is not None else cp.empty(want.shape, dtype=dtype)
                got = cp.asnumpy(_raw_gemm(cp, Ad, Bd, C, alpha, beta))  # a sync point
                if not np.array_equal(got, want):
                    return f"a direct cuBLAS product was wrong ({got.tolist()} for {want.tolist()})"
    except Exception as e:  # no libcublas found, a symbol missing, a cuBLAS status, …
        return f"cuBLAS could not be called directly ({_reason(e)})"
    return None


def probe(cp, device_id: int) -> str | None:
    """Load and try what training uses on ``cuda:device_id``: cuBLAS (a handle and a 2×2 product),
    NVRTC (compiling one element-wise kernel) and a launch of it; then fix the products' precision.
    Raises ``BackendUnavailable`` naming the fix for the first that fails. Returns why cuBLAS
    cannot be called directly (``_check_raw_products``: then no CUDA graphs), or None."""
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
        why = _check_raw_products(cp)
    if why is None:
        return None
    return f"{why}, and CuPy refuses its own cuBLAS calls while a stream captures, so a graph cannot hold the products"


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
    graph_unavailable = probe(cp, device_id)
    cp.cuda.Device(device_id).use()
    return CupyBackend(f"cuda:{device_id}", cp, device_id, graph_unavailable=graph_unavailable)
