"""Devices: ``--device`` names parsed in one place, and the backend chosen once from them.

``cpu`` is numpy (``gpumlp.backends.base``); ``cuda``/``cuda:N`` is CuPy (``gpumlp.backends.cuda``, imported only
when a CUDA device is asked for), probed before it is used; ``auto`` takes CUDA when usable, else
the CPU, with a note saying why.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

import numpy as np

from gpumlp.backends.base import DEVICE_HELP, INSTALL_HINT, Backend
from gpumlp.backends.cpu import CPU
from gpumlp.errors import BackendUnavailable


def parse_device(spec: str) -> tuple[str, int | None]:
    """``"cuda:1"`` → ``("cuda", 1)``; ``"cpu"`` → ``("cpu", None)``; bad specs raise."""
    s = str(spec).strip().lower()
    if s in ("cpu", "auto"):
        return s, None
    if s == "cuda":
        return "cuda", 0
    if s.startswith("cuda:"):
        n = s[len("cuda:") :]
        if n.isdigit():
            return "cuda", int(n)
    raise BackendUnavailable(f"unknown device {spec!r}: use {DEVICE_HELP}")


def _import_cupy() -> ModuleType:
    try:
        return importlib.import_module("cupy")
    except ImportError as e:
        raise BackendUnavailable(f"--device cuda needs CuPy, which is not installed ({e}): {INSTALL_HINT}") from e


def _cuda_backend(device_id: int) -> Backend:
    """``cuda:device_id`` once CuPy, the driver, the device and the libraries answer (``gpumlp.backends.cuda``)."""
    cp = _import_cupy()
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError, missing driver library, …
        reason = " ".join(str(e).split()) or type(e).__name__
        raise BackendUnavailable(
            f"CuPy is installed but no usable CUDA GPU was found ({reason}); "
            "check the NVIDIA driver with nvidia-smi, or use --device cpu"
        ) from e
    if count == 0:
        raise BackendUnavailable("CuPy is installed but the CUDA runtime reports no GPU; use --device cpu")
    if device_id >= count:
        plural = "GPU" if count == 1 else "GPUs"
        raise BackendUnavailable(
            f"cuda:{device_id} does not exist: CUDA sees {count} {plural} (cuda:0 to cuda:{count - 1})"
        )
    # Probe what training uses (cuBLAS, NVRTC, one kernel), then make the device current.
    from gpumlp.backends.cuda import cuda_backend

    return cuda_backend(cp, device_id)


def get_backend(device: str | Backend = "cpu") -> Backend:
    """Choose the backend once. ``auto`` takes CUDA when usable, else the CPU, with a note why."""
    if isinstance(device, Backend):
        return device
    kind, index = parse_device(device)
    if kind == "cpu":
        return CPU
    if kind == "cuda":
        return _cuda_backend(index)
    try:  # auto
        be = _cuda_backend(0)
    except BackendUnavailable as e:
        return dataclasses.replace(CPU, note=f"auto chose cpu: {e}")
    return dataclasses.replace(be, note=f"auto chose {be.name}")


def describe_devices() -> dict:
    """What ``gpumlp devices`` reports: numpy and its BLAS, CuPy and CUDA, every GPU or why there
    is none, and what ``--device auto`` would choose. Imports CuPy (only here and for ``cuda``)."""

    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    info = {
        "numpy": np.__version__,
        "blas": " ".join(str(blas.get(k, "")) for k in ("name", "version")).strip() or "unknown",
        "cpu_blas": CPU.blas.describe(),  # what CPU training calls: numpy's BLAS or Intel MKL
        "cpu_threads": _describe_threads(),  # how many threads a new CPU run would use
        "cupy": None,
        "gpus": [],
        "reason": None,
    }
    try:
        cp = importlib.import_module("cupy")
    except ImportError:
        info["reason"] = f"CuPy is not installed: {INSTALL_HINT}"
    else:
        info["cupy"] = {"version": cp.__version__}
        try:
            info["cupy"]["cuda_runtime"] = _cuda_version(cp.cuda.runtime.runtimeGetVersion())
            for i in range(cp.cuda.runtime.getDeviceCount()):
                p = cp.cuda.runtime.getDeviceProperties(i)
                name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
                info["gpus"].append(
                    {
                        "device": f"cuda:{i}",
                        "name": name,
                        "memory_gib": round(p["totalGlobalMem"] / 2**30, 1),
                        "compute_capability": f"{p['major']}.{p['minor']}",
                    }
                )
        except Exception as e:  # no driver, no device: CuPy's reason, one line
            info["reason"] = " ".join(str(e).split()) or type(e).__name__
        if not info["gpus"] and info["reason"] is None:
            info["reason"] = "the CUDA runtime reports no GPU"
    info["auto"] = "cpu"
    if info["gpus"]:
        try:  # what choosing the device checks: the libraries and one kernel (gpumlp.backends.cuda.probe)
            info["auto"] = _cuda_backend(0).name
        except BackendUnavailable as e:
            info["reason"] = str(e)
    return info


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"  # 12040 → "12.4"


def _describe_threads() -> str:
    from gpumlp.backends import blas_threads

    n, why = blas_threads.training_threads()
    return f"{n} BLAS thread{'s' if n != 1 else ''} ({why}; {blas_threads.THREADS_ENV}=N to choose)"


def format_devices(d: dict) -> str:
    """``describe_devices``' dict as the aligned text ``gpumlp devices`` prints."""
    cupy = d["cupy"]
    lines = [
        f"numpy          {d['numpy']} ({d['blas']})",
        f"cpu training   {d['cpu_blas']}",
        f"cpu threads    {d['cpu_threads']}",
        f"cupy           {cupy['version']} (CUDA {cupy.get('cuda_runtime', '?')})"
        if cupy
        else "cupy           not installed",
    ]
    lines += [f"{g['device']:<15}{g['name']}, {g['memory_gib']} GiB, compute capability {g['compute_capability']}"
              for g in d["gpus"]]  # fmt: skip
    if not d["gpus"]:
        lines.append(f"gpus           none usable: {d['reason']}")
    why = f" ({d['reason']})" if d["gpus"] and d["auto"] == "cpu" else ""  # a GPU that failed the probe
    return "\n".join([*lines, f"--device auto  {d['auto']}{why}"])
