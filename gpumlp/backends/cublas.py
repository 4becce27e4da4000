"""cuBLAS called directly through ctypes, on CuPy's handle: one gemm that a CUDA graph can capture.

CuPy refuses its own cuBLAS calls while a stream captures (its ``setStream`` raises), so the CUDA
backend's products go through ``raw_gemm`` here where the probe found it usable
(``gpumlp.backends.probe``). ``select_precision`` pins every float32 product to FP32, never TF32.
"""

from __future__ import annotations

import ctypes
import importlib

import numpy as np

from gpumlp.errors import BackendUnavailable

CUBLAS_SONAMES = ("libcublas.so.13", "libcublas.so.12")  # tried when no libcublas is mapped yet
MAPS = "/proc/self/maps"  # where the process's loaded libraries are listed (Linux)
CUBLAS_WORKSPACE = 32 << 20  # bytes of a workspace of gpumlp's own for cuBLAS (NVIDIA's advice for Hopper)
CUBLAS_STATUS = {1: "NOT_INITIALIZED", 3: "ALLOC_FAILED", 7: "INVALID_VALUE", 8: "ARCH_MISMATCH", 11: "MAPPING_ERROR",
                 13: "EXECUTION_FAILED", 14: "INTERNAL_ERROR", 15: "NOT_SUPPORTED", 16: "LICENSE_ERROR"}  # fmt: skip
_LIB = None  # the loaded ``_Cublas``
_WORKSPACES: dict = {}  # cuBLAS handle → its workspace block (cupy.cuda.alloc), kept for the process
matmul_fp32 = False  # whether cupy.matmul's float32 products are pinned to FP32 (select_precision)


def reason(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class _Cublas:
    """The cuBLAS entry points ``raw_gemm`` calls through ctypes, from one loaded libcublas."""

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
            tried.append(reason(e))
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


def raw_gemm(xp, A, B, C, alpha: float, beta: float):
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
        C[...] = raw_gemm(xp, A, B, T, alpha, beta)
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


def select_precision(cp, cublas, handle) -> None:
    """Full float32 for every product on this device (``CupyBackend.tf32``): the cuBLAS handle's
    math mode for ``cupy.cublas.gemm``, and CuPy's own compute type for the ``cupy.matmul`` that
    augmentation calls (otherwise TF32 when CUPY_TF32=1)."""
    libs = getattr(cublas, "cublas", None)  # cupy.cublas's binding of the library
    if libs is not None and hasattr(libs, "setMathMode"):
        libs.setMathMode(handle, getattr(libs, "CUBLAS_DEFAULT_MATH", 0))
    global matmul_fp32
    try:
        linalg = importlib.import_module("cupy._core._routines_linalg")
        linalg.set_compute_type(np.dtype(np.float32), linalg.COMPUTE_TYPE_FP32)
        matmul_fp32 = True
    except Exception:  # a CuPy without this (private) switch, or a stand-in: it honours CUPY_TF32,
        matmul_fp32 = False  # so the products go through cupy.cublas.gemm (augmentation's stay TF32-able)
