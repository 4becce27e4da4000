"""numpy's own BLAS, for the one product numpy does not expose: C ← α·A·B + β·C, in place.

``numpy.matmul`` always computes C = A·B into fresh or zeroed memory, but the BLAS routine under
it (``sgemm``) takes α and β. With β = 1 and α = −η the plain SGD step of a weight matrix,
W ← W − η·Aᵀ·dZ, is *one* product that never writes the gradient dW at all: for 784-800-10 at
batch 128 that removes three passes over 2.5 MB (write dW, scale it, subtract it) from a ~3.5 ms
step. numpy's wheels bundle OpenBLAS (64-bit integers, ``scipy_`` symbol prefix); this module
finds that library, the one numpy already loaded, and calls ``cblas_sgemm``/``cblas_dgemm`` in it
through ctypes. Where it cannot (another BLAS build, a platform we do not know), ``gemm`` answers
False and the caller computes the same thing with numpy (see ``Backend.gemm``).
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SYMBOLS = ("scipy_cblas_{}gemm64_", "cblas_{}gemm64_")  # ILP64 builds (numpy ≥ 2.0, and 1.2x) only
_routines: dict | None = None  # {dtype: ctypes function}, found on first use


def _library_paths() -> list[str]:
    """Candidate OpenBLAS files shipped inside the numpy wheel (Linux/Windows: numpy.libs, macOS: .dylibs)."""
    root = os.path.dirname(np.__file__)
    patterns = [os.path.join(root, "..", "numpy.libs", "*openblas*"), os.path.join(root, ".dylibs", "*openblas*")]
    return sorted(p for pattern in patterns for p in glob.glob(pattern))


def _find() -> dict:
    """The gemm routines of numpy's bundled OpenBLAS, each checked once on a small product; {} if none."""
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in _SYMBOLS:
            found = {}
            for dtype, letter, scalar in ((np.float32, "s", ctypes.c_float), (np.float64, "d", ctypes.c_double)):
                f = getattr(lib, symbol.format(letter), None)
                if f is None:
                    break
                order = [ctypes.c_int] * 3  # row-major, transpose A?, transpose B?
                f.argtypes = [
                    *order,
                    i64,
                    i64,
                    i64,
                    scalar,
                    vp,
                    i64,
                    vp,
                    i64,
                    scalar,
                    vp,
                    i64,
                ]  # m n k α A lda B ldb β C ldc
                f.restype = None
                found[np.dtype(dtype)] = f
            if len(found) == 2 and _agrees(found):
                return found
    return {}


def _agrees(routines: dict) -> bool:
    """One small product with every layout gemm accepts, against numpy: a wrong binding shows here."""
    rng = np.random.default_rng(0)
    for dtype in routines:
        A, B, C = (rng.standard_normal(s).astype(dtype) for s in ((3, 4), (4, 5), (3, 5)))
        for a, b in ((A, B), (np.asfortranarray(A), B), (A, np.asfortranarray(B))):
            out = C.copy()
            if not _gemm(routines, a, b, out, -0.5, 2.0) or not np.allclose(out, 2 * C - 0.5 * (A @ B), rtol=1e-5):
                return False
    return True


def _operand(M: np.ndarray):
    """(transpose flag, leading dimension) of a 2-D operand that is C- or F-contiguous, else None."""
    if M.flags.c_contiguous:
        return _NO_TRANS, max(M.shape[1], 1)
    if M.flags.f_contiguous:  # a transposed view of a C-contiguous matrix: BLAS reads it as such
        return _TRANS, max(M.shape[0], 1)
    return None


def gemm(A: np.ndarray, B: np.ndarray, C: np.ndarray, alpha: float, beta: float) -> bool:
    """C ← α·A·B + β·C in place through numpy's BLAS, for A (m, k), B (k, n), C (m, n) of one float
    dtype, A and B C- or F-contiguous (a ``.T`` view is fine), C C-contiguous. Returns False, having
    done nothing, when the BLAS is out of reach or the arrays do not qualify."""
    global _routines
    if _routines is None:
        _routines = _find()
    return _gemm(_routines, A, B, C, alpha, beta)


def _gemm(routines: dict, A, B, C, alpha: float, beta: float) -> bool:
    f = routines.get(C.dtype)
    if f is None or A.dtype != C.dtype or B.dtype != C.dtype or not C.flags.c_contiguous:
        return False
    a, b = _operand(A), _operand(B)
    if a is None or b is None:
        return False
    (m, k), n = A.shape, B.shape[1]
    if C.shape != (m, n) or B.shape[0] != k:
        raise ValueError(f"gemm: shapes {A.shape} @ {B.shape} do not give {C.shape}")
    f(_ROW_MAJOR, a[0], b[0], m, n, k, alpha, A.ctypes.data, a[1], B.ctypes.data, b[1], beta, C.ctypes.data, max(n, 1))
    return True


def available() -> bool:
    """Whether ``gemm`` reaches numpy's BLAS on this installation."""
    global _routines
    if _routines is None:
        _routines = _find()
    return bool(_routines)
