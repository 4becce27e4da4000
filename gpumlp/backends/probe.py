"""What choosing a CUDA device checks: the libraries training loads (cuBLAS, NVRTC), one tiny kernel,
and whether cuBLAS can be called directly (``gpumlp.backends.cublas.raw_gemm``, which CUDA graphs need).

A missing library or an unusable GPU becomes one ``BackendUnavailable`` line naming the fix, not a
traceback in the first epoch.
"""

from __future__ import annotations

import importlib

import numpy as np

from gpumlp.backends import kernels
from gpumlp.backends.base import INSTALL_HINT
from gpumlp.backends.cublas import raw_gemm, reason, select_precision
from gpumlp.errors import BackendUnavailable

LIBRARY_FIX = (
    f"install CuPy's CUDA libraries with {INSTALL_HINT} (they bring the ctk extra), "
    "or put a CUDA Toolkit's lib64 on LD_LIBRARY_PATH; or use --device cpu"
)


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
            raise BackendUnavailable(f"CuPy cannot load cuBLAS on {where} ({reason(e)}): {LIBRARY_FIX}") from e
        x = cp.asarray(np.array([1.0, 2.0], dtype=np.float32))
        try:
            y = cp.ElementwiseKernel(*kernels.PROBE, name="gpumlp_probe")(x)
            got_y = cp.asnumpy(y)  # a sync point: the launch has run
        except Exception as e:
            if "nvrtc" in str(e).lower():  # the run-time compiler CuPy builds every kernel with
                raise BackendUnavailable(
                    f"CuPy cannot compile kernels on {where}: NVRTC is missing ({reason(e)}); {LIBRARY_FIX}"
                ) from e
            raise BackendUnavailable(
                f"a test kernel failed on {where} ({reason(e)}): the NVIDIA driver may be older than the "
                f"CUDA {_runtime(cp)} that CuPy uses (nvidia-smi shows the driver's CUDA version; install "
                "the cupy-cudaXXx that matches it), or use --device cpu"
            ) from e
        try:
            A = cp.asarray(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32))
            C = cp.empty((2, 2), dtype=np.float32)
            cublas.gemm("N", "N", A, A, out=C)
            got_C = cp.asnumpy(C)
        except Exception as e:
            raise BackendUnavailable(f"cuBLAS failed on {where} ({reason(e)}): {LIBRARY_FIX}") from e
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


def _check_raw_products(cp) -> str | None:
    """Why ``raw_gemm`` cannot do training's products on the current device, or None: small
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
                got = cp.asnumpy(raw_gemm(cp, Ad, Bd, C, alpha, beta))  # a sync point
                if not np.array_equal(got, want):
                    return f"a direct cuBLAS product was wrong ({got.tolist()} for {want.tolist()})"
    except Exception as e:  # no libcublas found, a symbol missing, a cuBLAS status, …
        return f"cuBLAS could not be called directly ({reason(e)})"
    return None


def _runtime(cp) -> str:
    try:
        v = cp.cuda.runtime.runtimeGetVersion()
    except Exception:
        return "runtime"
    return f"{v // 1000}.{v % 1000 // 10}"
