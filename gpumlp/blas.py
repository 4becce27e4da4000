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
  ``auto`` when installed. On the dev machine its products are up to 2× faster than OpenBLAS's
  (a 10×784×300 first layer: 44 against 89 µs; the large networks' 1.1–1.5×: see
  ``scripts/products.py``), so then every product with m·n·k ≥ ``MKL_MIN_MNK`` goes through it as
  well (``Backend.matmul``). Smaller ones stay with numpy's matmul: a ctypes call costs ~5 µs, and
  OpenBLAS runs such products on one thread in ~1–3 µs.

Each routine is checked once on a small example against numpy before it is used. Where neither
library is reachable (another BLAS build, a platform we do not know), ``gemm``/``axpby`` answer
False and the caller computes the same thing with numpy (see ``Backend.gemm`` and ``Backend.axpby``).

How many threads these libraries use in a training run is ``gpumlp.blas_threads``'s choice.
"""

from __future__ import annotations

import ctypes
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
_routines: dict | None = None  # {(name, dtype): ctypes function}, found on first use
_name = ""  # which library they are in: "mkl", "numpy" or "" (none)
_choice = "auto"  # the GPUMLP_BLAS value (or select's choice) that picked it
_libraries: dict[str, dict] = {}  # what _find gave for each library: looked for once per process


def _library_paths() -> list[str]:
    """Candidate OpenBLAS files shipped inside the numpy wheel (Linux/Windows: numpy.libs, macOS: .dylibs)."""
    root = os.path.dirname(np.__file__)
    patterns = [os.path.join(root, "..", "numpy.libs", "*openblas*"), os.path.join(root, ".dylibs", "*openblas*")]
    return sorted(p for pattern in patterns for p in glob.glob(pattern))


def _mkl_paths() -> list[str]:
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


def _choose(choice: str | None = None) -> tuple[str, dict]:
    """``(name, routines)`` of the library ``choice`` (default: ``GPUMLP_BLAS``) asks for: ``auto``
    takes MKL if it is installed, else numpy's; ``("", {})`` if the one chosen is out of reach."""
    global _choice
    choice = (os.environ.get("GPUMLP_BLAS", "auto") if choice is None else choice).strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(f"GPUMLP_BLAS={choice!r} is not a BLAS gpumlp knows: use {', '.join(CHOICES)} (or unset it)")
    _choice = choice
    if choice in ("auto", "mkl"):
        mkl = _cached("mkl", lambda: _find(_mkl_paths(), _MKL_SYMBOLS))
        if mkl:
            return "mkl", mkl
        if choice == "mkl":
            raise ConfigError(
                "GPUMLP_BLAS=mkl but Intel MKL is not installed, or incomplete: pip install 'gpumlp[mkl]' "
                "(or unset GPUMLP_BLAS)"
            )
    found = _cached("numpy", lambda: _find(_library_paths(), _NUMPY_SYMBOLS))
    return ("numpy" if found else ""), found


def _cached(library: str, find) -> dict:
    if library not in _libraries:
        _libraries[library] = find()
    return _libraries[library]


def select(choice: str | None = None) -> str:
    """From now on call the library ``choice`` ("auto", "mkl" or "numpy"; None: ``GPUMLP_BLAS``'s)
    picks, and return its name (see ``name``). For comparing the two in one process
    (scripts/bench_blas.py). A model made under MKL keeps MKL's product function, whose big
    products then go through whichever library is selected; one made under numpy's BLAS keeps
    ``numpy.matmul``."""
    global _routines, _name
    _name, _routines = _choose(choice)
    return name()


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
    if _routines is None:
        select()  # GPUMLP_BLAS's choice, on first use
    return _routines


def _address(M: np.ndarray) -> int:
    """The data address of a C-contiguous array. ``M.ctypes.data`` builds a helper object, ~1.5 µs
    a call against ~0.5 µs here; the batch-10 step makes one gemm call of three arrays."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(M))  # a writable, non-empty array
    except (TypeError, ValueError):  # read-only or empty
        return M.ctypes.data


def available() -> bool:
    """Whether ``gemm`` and ``axpby`` reach a BLAS on this installation."""
    return bool(_get())


def name() -> str:
    """The library ``gemm`` and ``axpby`` call: ``"mkl"``, ``"numpy"`` (numpy's own OpenBLAS), or
    ``""`` when they fall back to numpy operations."""
    _get()
    return _name if _routines else ""


def describe() -> str:
    """One line on what gpumlp's CPU training calls, for ``gpumlp devices`` and the benchmark."""
    return {
        "mkl": f"Intel MKL (GPUMLP_BLAS={_choice}): products of m·n·k ≥ {MKL_MIN_MNK:,}, "
        "SGD steps and updates; smaller products numpy.matmul",
        "numpy": "numpy's own BLAS: numpy.matmul, and SGD steps and updates through its gemm and axpby",
        "": "numpy.matmul and numpy operations (numpy's BLAS is out of reach for gemm and axpby)",
    }[name()]


def serves_products() -> bool:
    """Whether the big products of forward and backward should go through ``gemm`` too: when it
    reaches a faster BLAS than the one under ``numpy.matmul`` (MKL)."""
    return name() == "mkl"


def _operand(M: np.ndarray):
    """(transpose flag, leading dimension, address) of a 2-D operand that is C- or F-contiguous, else None."""
    if M.flags.c_contiguous:
        return _NO_TRANS, max(M.shape[1], 1), _address(M)
    if M.flags.f_contiguous:  # a transposed view of a C-contiguous matrix: BLAS reads it as such
        return _TRANS, max(M.shape[0], 1), _address(M.T)
    return None


def gemm(A: np.ndarray, B: np.ndarray, C: np.ndarray, alpha: float, beta: float) -> bool:
    """C ← α·A·B + β·C in place through the BLAS, for A (m, k), B (k, n), C (m, n) of one float
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
    """y ← α·x + β·y in place through the BLAS, for x and y C-contiguous arrays of one shape and
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
