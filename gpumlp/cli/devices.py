"""``gpumlp devices``: what your computer offers (numpy and its BLAS, CuPy and CUDA, every GPU) and
what ``--device auto`` would choose, as a dict and as the aligned text the command prints."""

from __future__ import annotations

import importlib

import numpy as np

from gpumlp.backends.base import INSTALL_HINT
from gpumlp.backends.cpu import CPU
from gpumlp.backends.registry import get_backend
from gpumlp.errors import BackendUnavailable


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
            info["auto"] = get_backend("cuda:0").name
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
