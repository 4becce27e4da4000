"""The BLAS under gpumlp's CPU training: numpy's own, or Intel MKL when installed.

Two operations numpy does not expose: C ← α·A·B + β·C and y ← α·x + β·y.
``numpy.matmul`` always computes C = A·B into fresh or zeroed memory, but the BLAS routine under
it (``sgemm``) takes α and β. With β = 1 and α = −η the plain SGD step of a weight matrix,
W ← W − η·Aᵀ·dZ, is *one* product that never writes the gradient dW at all: for 784-800-10 at
batch 128 that removes three passes over 2.5 MB (write dW, scale it, subtract it) from a ~3.5 ms
step. Likewise ``y += a * x`` is two single-threaded numpy passes and a temporary, where BLAS's
``axpby`` is one pass on every core: the optimisers' whole-buffer updates.

Two libraries can serve them (``GPUMLP_BLAS`` picks: ``auto``, the default, ``mkl`` or ``numpy``):

- **numpy's own.** numpy's wheels bundle OpenBLAS (64-bit integers, ``scipy_`` symbol prefix); this
  module finds the library numpy already loaded and calls ``cblas_?gemm`` / ``cblas_?axpby`` there.
  The products of forward and backward stay with ``numpy.matmul``, which calls the same library.
- **Intel MKL**, from ``pip install 'gpumlp[mkl]'`` (the ``mkl`` wheel's ``libmkl_rt``), taken by
  ``auto`` when installed. Its products can be up to 2× faster than OpenBLAS's, so then every
  product with m·n·k ≥ ``MKL_MIN_MNK`` goes through it as well (``Backend.matmul``); smaller ones
  stay with numpy's matmul (docs/speed.md#mkl-for-the-big-products).

A ``Blas`` is one choice of library and its routines; the CPU backend owns one (``NumpyBackend.blas``,
by default ``chosen()``: what ``GPUMLP_BLAS`` picks). Each library is looked for once per process and
each routine checked on a small example against numpy before it is used. Where neither library is
reachable (another BLAS build, a platform we do not know), ``gemm``/``axpby`` answer False and the
caller computes the same thing with numpy (see ``Backend.gemm`` and ``Backend.axpby``).

How many threads these libraries use in a training run is ``gpumlp.backends.blas_threads``'s choice.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import site
import sys
import sysconfig

import numpy as np

from gpumlp.errors import ConfigError

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# Each library's 64-bit-integer (ILP64) CBLAS entry points, "{}" standing for e.g. "sgemm"
_NUMPY_SYMBOLS = ("scipy_cblas_{}64_", "cblas_{}64_")  # numpy ≥ 2.0 (and 1.2x) wheels' OpenBLAS
_MKL_SYMBOLS = ("cblas_{}_64",)  # MKL's ILP64 CBLAS, in libmkl_rt
# (folder, libmkl_rt, what it loads on its first call with MKL's default Intel threading layer)
_MKL_LAYOUTS = (
    ("lib", "libmkl_rt.so*", ("libmkl_core.so*", "libmkl_intel_thread.so*", "libiomp5.so")),
    ("Library/bin", "mkl_rt*.dll", ("mkl_core*.dll", "mkl_intel_thread*.dll", "libiomp5md.dll")),
)
CHOICES = ("auto", "mkl", "numpy")
MKL_MIN_MNK = 1 << 19  # products this big go to MKL: where OpenBLAS, too, starts a second thread
_DTYPES = ((np.dtype(np.float32), "s", ctypes.c_float), (np.dtype(np.float64), "d", ctypes.c_double))


def library_paths() -> list[str]:
    """Candidate OpenBLAS files shipped inside the numpy wheel (Linux/Windows: numpy.libs, macOS: .dylibs)."""
    root = os.path.dirname(np.__file__)
    patterns = [os.path.join(root, "..", "numpy.libs", "*openblas*"), os.path.join(root, ".dylibs", "*openblas*")]
    return sorted(p for pattern in patterns for p in glob.glob(pattern))


def mkl_paths() -> list[str]:
    """``libmkl_rt`` where the ``mkl`` wheel puts it, the environment's own first: its lib/ (Library/bin
    on Windows), then the user base's for ``pip install --user`` when user site-packages are on.
    Only a complete install counts: libmkl_rt loads MKL's other libraries on its first call, and one
    missing there ends the process (MKL's "FATAL ERROR: Cannot load libmkl_core", or the loader's
    "undefined symbol: omp_get_num_procs" without Intel OpenMP) instead of raising anything."""
    roots = [sys.prefix, sysconfig.get_paths()["data"]]
    if site.ENABLE_USER_SITE and sysconfig.get_config_var("userbase"):
        roots.append(sysconfig.get_config_var("userbase"))
    found = []
    for root in dict.fromkeys(roots):  # in order, each once
        for folder, rt, needed in _MKL_LAYOUTS:
            for path in sorted(glob.glob(os.path.join(root, folder, rt))):
                here = os.path.dirname(path)
                if all(glob.glob(os.path.join(here, n)) for n in needed) and path not in found:
                    found.append(path)
    return found


def _bind(lib, symbol: str) -> dict:
    """``{("gemm" | "axpby", dtype): function}`` with ctypes signatures, or {} if a symbol is missing.
    ``symbol`` names them: ``symbol.format("sgemm")`` → e.g. ``scipy_cblas_sgemm64_``."""
    i64, vp, flag = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    found = {}
    for dtype, letter, real in _DTYPES:
        gemm = getattr(lib, symbol.format(f"{letter}gemm"), None)
        axpby = getattr(lib, symbol.format(f"{letter}axpby"), None)
        if gemm is None or axpby is None:
            return {}
        # order, transA, transB, m, n, k, α, A, lda, B, ldb, β, C, ldc
        gemm.argtypes = [flag, flag, flag, i64, i64, i64, real, vp, i64, vp, i64, real, vp, i64]
        axpby.argtypes = [i64, real, vp, i64, real, vp, i64]  # n, α, x, incx, β, y, incy
        gemm.restype = axpby.restype = None
        found["gemm", dtype], found["axpby", dtype] = gemm, axpby
    return found


def _find(paths: list[str], symbols: tuple[str, ...]) -> dict:
    """The routines of the first library among ``paths`` that has them and computes them right
    on small examples; {} if none does."""
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in symbols:
            found = _bind(lib, symbol)
            if found and _agrees(found):
                return found
    return {}


@functools.cache  # a library is looked for, loaded and checked once per process
def _library(name: str) -> dict:
    """The checked routines of ``name`` ("mkl" or "numpy"), {} where it is out of reach."""
    if name == "mkl":
        return _find(mkl_paths(), _MKL_SYMBOLS)
    return _find(library_paths(), _NUMPY_SYMBOLS)


def _parse_choice(choice: str | None) -> str:
    """``choice``, or ``GPUMLP_BLAS``'s value when None, normalised and checked."""
    choice = (os.environ.get("GPUMLP_BLAS", "auto") if choice is None else choice).strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(f"GPUMLP_BLAS={choice!r} is not a BLAS gpumlp knows: use {', '.join(CHOICES)} (or unset it)")
    return choice


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


class Blas:
    """The library the CPU backend calls for C ← α·A·B + β·C and y ← α·x + β·y.

    ``choice``: "auto" (MKL if it is installed, else numpy's own), "mkl" or "numpy"; None: the
    ``GPUMLP_BLAS`` environment variable's. ``name`` is the library reached: "mkl", "numpy", or ""
    when neither is and ``gemm``/``axpby`` decline everything."""

    def __init__(self, choice: str | None = None):
        self.choice = _parse_choice(choice)
        self.name, self._routines = "", {}  # {(routine, dtype): ctypes function}
        if self.choice in ("auto", "mkl"):
            self._routines = _library("mkl")
            self.name = "mkl" if self._routines else ""
            if self.choice == "mkl" and not self._routines:
                raise ConfigError(
                    "GPUMLP_BLAS=mkl but Intel MKL is not installed, or incomplete: pip install 'gpumlp[mkl]' "
                    "(or unset GPUMLP_BLAS)"
                )
        if not self._routines:
            self._routines = _library("numpy")
            self.name = "numpy" if self._routines else ""

    def __repr__(self) -> str:
        return f"Blas({self.name or 'none'}, GPUMLP_BLAS={self.choice})"

    @property
    def available(self) -> bool:
        """Whether ``gemm`` and ``axpby`` reach a BLAS on this installation."""
        return bool(self._routines)

    @property
    def serves_products(self) -> bool:
        """Whether the big products of forward and backward should go through ``gemm`` too: when it
        reaches a faster BLAS than the one under ``numpy.matmul`` (MKL)."""
        return self.name == "mkl"

    def describe(self) -> str:
        """One line on what gpumlp's CPU training calls, for ``gpumlp devices`` and the benchmark."""
        return {
            "mkl": f"Intel MKL (GPUMLP_BLAS={self.choice}): products of m·n·k ≥ {MKL_MIN_MNK:,}, "
            "SGD steps and updates; smaller products numpy.matmul",
            "numpy": "numpy's own BLAS: numpy.matmul, and SGD steps and updates through its gemm and axpby",
            "": "numpy.matmul and numpy operations (numpy's BLAS is out of reach for gemm and axpby)",
        }[self.name]

    def gemm(self, A: np.ndarray, B: np.ndarray, C: np.ndarray, alpha: float, beta: float) -> bool:
        """C ← α·A·B + β·C in place, for A (m, k), B (k, n), C (m, n) of one float dtype, A and B C-
        or F-contiguous (a ``.T`` view is fine), C C-contiguous. Returns False, having done nothing,
        when the BLAS is out of reach or the arrays do not qualify."""
        return _gemm(self._routines, A, B, C, alpha, beta)

    def axpby(self, alpha: float, x: np.ndarray, beta: float, y: np.ndarray) -> bool:
        """y ← α·x + β·y in place, for x and y C-contiguous arrays of one shape and float dtype.
        Returns False, having done nothing, when the BLAS is out of reach or they do not qualify."""
        return _axpby(self._routines, alpha, x, beta, y)


@functools.cache
def _chosen(choice: str) -> Blas:
    return Blas(choice)


def chosen() -> Blas:
    """The ``Blas`` that ``GPUMLP_BLAS`` picks (one per value, made on first use): the CPU backend's."""
    return _chosen(_parse_choice(None))


def _address(M: np.ndarray) -> int:
    """The data address of a C-contiguous array. ``M.ctypes.data`` builds a helper object, ~1.5 µs
    a call against ~0.5 µs here; the batch-10 step makes one gemm call of three arrays."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(M))  # a writable, non-empty array
    except (TypeError, ValueError):  # read-only or empty
        return M.ctypes.data


@functools.cache  # asked once per process
def openblas_core() -> str:
    """The kernel set numpy's OpenBLAS chose for this CPU when it loaded (e.g. ``"skylakex"``),
    lower case; ``""`` where numpy's BLAS is not an OpenBLAS gpumlp can ask."""
    for path in library_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
            f = getattr(lib, symbol, None)
            if f is not None:
                f.argtypes, f.restype = [], ctypes.c_char_p
                return (f() or b"").decode("ascii", "replace").strip().lower()
    return ""


def _operand(M: np.ndarray):
    """(transpose flag, leading dimension, address) of a 2-D operand that is C- or F-contiguous, else None."""
    if M.flags.c_contiguous:
        return _NO_TRANS, max(M.shape[1], 1), _address(M)
    if M.flags.f_contiguous:  # a transposed view of a C-contiguous matrix: BLAS reads it as such
        return _TRANS, max(M.shape[0], 1), _address(M.T)
    return None


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


def _axpby(routines: dict, alpha: float, x, beta: float, y) -> bool:
    f = routines.get(("axpby", y.dtype))
    if f is None or x.dtype != y.dtype or not (x.flags.c_contiguous and y.flags.c_contiguous):
        return False
    if x.shape != y.shape:
        raise ValueError(f"axpby: shapes {x.shape} and {y.shape} differ")
    f(y.size, alpha, _address(x), 1, beta, _address(y), 1)
    return True
