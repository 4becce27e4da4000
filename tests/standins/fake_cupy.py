"""A stand-in ``cupy`` module: as many GPUs as asked (or no driver), and a probe that can fail in
each of the ways CuPy 14 fails without a toolkit."""

from __future__ import annotations

import sys
import types

import numpy as np


class FakeCudaError(RuntimeError):
    pass


FAILURES = {
    # what CuPy 14 raises when the library is missing or the launch fails, as seen without a toolkit
    "cublas": ImportError('Failure finding "libcublasLt.so.12": No such file: libcublasLt.so.12'),
    "nvrtc": RuntimeError('Failure finding "libnvrtc.so.12": No such file: libnvrtc.so.12'),
    "launch": FakeCudaError(
        "CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled with an unsupported toolchain."
    ),
}


def fake_cupy(n_devices: int | None, fail: str | None = None, monkeypatch=None) -> types.ModuleType:
    """A stand-in ``cupy`` module: ``None`` devices means the driver is missing; ``fail`` names the
    part of the probe that fails ("cublas", "nvrtc", "launch", or "wrong" for a wrong result).
    With ``monkeypatch``, it is installed as ``cupy`` and ``cupy.cublas``."""
    cp = types.ModuleType("cupy")

    def get_device_count():
        if n_devices is None:
            raise FakeCudaError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
        return n_devices

    cp.current = None
    cp.entered = []  # devices whose context was entered, in order

    class Device:
        def __init__(self, i):
            self.id = i

        def use(self):
            cp.current = self.id

        def __enter__(self):
            cp.entered.append(self.id)
            return self

        def __exit__(self, *exc):
            return False

    def properties(i):
        return {"name": f"Fake GPU {i}".encode(), "totalGlobalMem": 80 * 2**30, "major": 9, "minor": 0}

    def get_cublas_handle():
        if fail == "cublas":
            raise FAILURES["cublas"]
        return 1234

    class ElementwiseKernel:
        def __init__(self, in_params, out_params, body, name=""):
            self.body = body

        def __call__(self, x):
            if fail in ("nvrtc", "launch"):
                raise FAILURES[fail]
            return x + x + (2 if fail == "wrong" else 1)

    def gemm(transa, transb, A, B, out=None, alpha=1.0, beta=0.0):
        np.matmul(A, B, out=out)
        return out

    cublas_module = types.ModuleType("cupy.cublas")
    cublas_module.gemm = gemm
    cp.math_modes = []  # (handle, mode) set on cuBLAS handles
    cublas_module.cublas = types.SimpleNamespace(
        setMathMode=lambda h, mode: cp.math_modes.append((h, mode)), CUBLAS_DEFAULT_MATH=0
    )
    runtime = types.SimpleNamespace(
        getDeviceCount=get_device_count, runtimeGetVersion=lambda: 12040, getDeviceProperties=properties
    )
    cp.cuda = types.SimpleNamespace(
        runtime=runtime, Device=Device, device=types.SimpleNamespace(get_cublas_handle=get_cublas_handle)
    )
    cp.ElementwiseKernel = ElementwiseKernel
    cp.asarray, cp.asnumpy, cp.empty = np.asarray, np.asarray, np.empty
    cp.__version__ = "14.0.0"
    if monkeypatch is not None:
        monkeypatch.setitem(sys.modules, "cupy", cp)
        monkeypatch.setitem(sys.modules, "cupy.cublas", cublas_module)
        # No compute-type switch (a real CuPy imported earlier must not be reached), and the
        # choice select_precision records is put back after the test.
        monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", None)
        monkeypatch.setattr("gpumlp.backends.cublas.matmul_fp32", False)
    return cp
