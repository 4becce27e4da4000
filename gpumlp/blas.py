"""numpy's own BLAS, for two operations numpy does not expose: C ← α·A·B + β·C and y ← α·x + β·y.

``numpy.matmul`` always computes C = A·B into fresh or zeroed memory, but the BLAS routine under
it (``sgemm``) takes α and β. With β = 1 and α = −η the plain SGD step of a weight matrix,
W ← W − η·Aᵀ·dZ, is *one* product that never writes the gradient dW at all: for 784-800-10 at
batch 128 that removes three passes over 2.5 MB (write dW, scale it, subtract it) from a ~3.5 ms
step. Likewise ``y += a * x`` is two single-threaded numpy passes and a temporary, where BLAS's
``axpby`` is one pass on every core: the optimisers' whole-buffer updates.

numpy's wheels bundle OpenBLAS (64-bit integers, ``scipy_`` symbol prefix); this module finds that
library, the one numpy already loaded, and calls ``cblas_?gemm`` and ``cblas_?axpby`` in it through
ctypes, after checking each on a small example against numpy. Where it cannot (another BLAS build,
a platform we do not know), ``gemm``/``axpby`` answer False and the caller computes the same thing
with numpy (see ``Backend.gemm`` and ``Backend.axpby``).
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_PREFIXES = ("scipy_cblas_", "cblas_")  # with the suffix "64_": ILP64 builds (numpy ≥ 2.0, and 1.2x) only
_DTYPES = ((np.dtype(np.float32), "s", ctypes.c_float), (np.dtype(np.float64), "d", ctypes.c_double))
_routines: dict | None = None  # {(name, dtype): ctypes function}, found on first use


def _library_paths() -> list[str]:
    """Candidate OpenBLAS files shipped inside the numpy wheel (Linux/Windows: numpy.libs, macOS: .dylibs)."""
    root = os.path.dirname(np.__file__)
    patterns = [os.path.join(root, "..", "numpy.libs", "*openblas*"), os.path.join(root, ".dylibs", "*openblas*")]
    return sorted(p for pattern in patterns for p in glob.glob(pattern))


def _bind(lib, prefix: str) -> dict:
    """``{("gemm" | "axpby", dtype): function}`` with ctypes signatures, or {} if a symbol is missing."""
    i64, vp, flag = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    found = {}
    for dtype, letter, real in _DTYPES:
        gemm = getattr(lib, f"{prefix}{letter}gemm64_", None)
        axpby = getattr(lib, f"{prefix}{letter}axpby64_", None)
        if gemm is None or axpby is None:
            return {}
        # order, transA, transB, m, n, k, α, A, lda, B, ldb, β, C, ldc
        gemm.argtypes = [flag, flag, flag, i64, i64, i64, real, vp, i64, vp, i64, real, vp, i64]
        axpby.argtypes = [i64, real, vp, i64, real, vp, i64]  # n, α, x, incx, β, y, incy
        gemm.restype = axpby.restype = None
        found["gemm", dtype], found["axpby", dtype] = gemm, axpby
    return found


def _find() -> dict:
    """The routines of numpy's bundled OpenBLAS, checked on small examples; {} if out of reach."""
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            found = _bind(lib, prefix)
            if found and _agrees(found):
                return found
    return {}


def _agrees(routines: dict) -> bool:
    """One small product with every layout gemm accepts, and one axpby, against numpy: a wrong
    binding shows here rather than in a network."""
    rng = np.random.default_rng(0)
    for dtype, _, _ in _DTYPES:
        A, B, C = (rng.standard_normal(s).astype(dtype) for s in ((3, 4), (4, 5), (3, 5)))
        for a, b in ((A, B), (np.asfortranarray(A), B), (A, np.asfortranarray(B))):
            out = C.copy()
            if not _gemm(routines, a, b, out, -0.5, 2.0) or not np.allclose(out, 2 * C - 0.5 * (A @ B), rtol=1e-5):
                return False
        x, y = rng.standard_normal(7).astype(dtype), rng.standard_normal(7).astype(dtype)
        out = y.copy()
        if not _axpby(routines, -0.5, x, 2.0, out) or not np.allclose(out, 2 * y - 0.5 * x, rtol=1e-5):
            return False
    return True


def _get() -> dict:
    global _routines
    if _routines is None:
        _routines = _find()
    return _routines


def _address(M: np.ndarray) -> int:
    """The data address of a C-contiguous array. ``M.ctypes.data`` builds a helper object, ~1.5 µs
    a call against ~0.5 µs here; the batch-10 step makes one gemm call of three arrays."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(M))  # a writable, non-empty array
    except (TypeError, ValueError):  # read-only or empty
        return M.ctypes.data


def available() -> bool:
    """Whether ``gemm`` and ``axpby`` reach numpy's BLAS on this installation."""
    return bool(_get())


def _operand(M: np.ndarray):
    """(transpose flag, leading dimension, address) of a 2-D operand that is C- or F-contiguous, else None."""
    if M.flags.c_contiguous:
        return _NO_TRANS, max(M.shape[1], 1), _address(M)
    if M.flags.f_contiguous:  # a transposed view of a C-contiguous matrix: BLAS reads it as such
        return _TRANS, max(M.shape[0], 1), _address(M.T)
    return None


def gemm(A: np.ndarray, B: np.ndarray, C: np.ndarray, alpha: float, beta: float) -> bool:
    """C ← α·A·B + β·C in place through numpy's BLAS, for A (m, k), B (k, n), C (m, n) of one float
    dtype, A and B C- or F-contiguous (a ``.T`` view is fine), C C-contiguous. Returns False, having
    done nothing, when the BLAS is out of reach or the arrays do not qualify."""
    return _gemm(_routines if _routines is not None else _get(), A, B, C, alpha, beta)


def _gemm(routines: dict, A, B, C, alpha: float, beta: float) -> bool:
    f = routines.get(("gemm", C.dtype))
    if f is None or A.dtype != C.dtype or B.dtype != C.dtype or not C.flags.c_contiguous:
        return False
    a, b = _operand(A), _operand(B)
    if a is None or b is None:
        return False
    (m, k), n = A.shape, B.shape[1]
    if C.shape != (m, n) or B.shape[0] != k:
        raise ValueError(f"gemm: shapes {A.shape} @ {B.shape} do not give {C.shape}")
    f(_ROW_MAJOR, a[0], b[0], m, n, k, alpha, a[2], a[1], b[2], b[1], beta, _address(C), max(n, 1))
    return True


def axpby(alpha: float, x: np.ndarray, beta: float, y: np.ndarray) -> bool:
    """y ← α·x + β·y in place through numpy's BLAS, for x and y C-contiguous arrays of one shape and
    float dtype. Returns False, having done nothing, when the BLAS is out of reach or they do not
    qualify."""
    return _axpby(_routines if _routines is not None else _get(), alpha, x, beta, y)


def _axpby(routines: dict, alpha: float, x, beta: float, y) -> bool:
    f = routines.get(("axpby", y.dtype))
    if f is None or x.dtype != y.dtype or not (x.flags.c_contiguous and y.flags.c_contiguous):
        return False
    if x.shape != y.shape:
        raise ValueError(f"axpby: shapes {x.shape} and {y.shape} differ")
    f(y.size, alpha, _address(x), 1, beta, _address(y), 1)
    return True
