"""Devices: ``--device`` names parsed in one place, and the backend chosen once from them.

``cpu`` is numpy (``gpumlp.backends.base``); ``cuda``/``cuda:N`` is CuPy (``gpumlp.backends.cuda``, imported only
when a CUDA device is asked for), probed before it is used; ``auto`` takes CUDA when usable, else
the CPU, with a note saying why. ``register`` adds a device name (the tests' strict fake device),
as thinc's ``get_ops`` table does: model code receives a backend and never chooses one.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from types import ModuleType

from gpumlp.backends.base import DEVICE_HELP, INSTALL_HINT, Backend
from gpumlp.backends.cpu import CPU
from gpumlp.errors import BackendUnavailable


def parse_device(spec: str) -> tuple[str, int | None]:
    """``"cuda:1"`` → ``("cuda", 1)``; ``"cpu"`` → ``("cpu", None)``; a registered ``"name"`` →
    ``("name", None)`` and ``"name:N"`` → ``("name", N)``; bad specs raise."""
    s = str(spec).strip().lower()
    if s in ("cpu", "auto"):
        return s, None
    if s == "cuda":
        return "cuda", 0
    name, colon, n = s.partition(":")
    if name in _FACTORIES and name != "cpu":
        if not colon and name != "cuda":
            return name, None
        if n.isdigit():
            return name, int(n)
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


# Device name → factory(index) → Backend; ``index`` is N of ``name:N`` (cuda's defaults to 0), else None.
_FACTORIES: dict[str, Callable[[int | None], Backend]] = {"cpu": lambda index: CPU, "cuda": _cuda_backend}


def register(name: str, factory: Callable[[int | None], Backend]) -> None:
    """Make the device ``name`` (and ``name:N``) mean ``factory(None)`` (``factory(N)``), e.g. a
    stand-in device in tests; registering a name again replaces its factory."""
    if name != name.strip().lower() or not name.isidentifier() or name == "auto":
        raise ValueError(f"a device name is a lower-case identifier other than 'auto', not {name!r}")
    _FACTORIES[name] = factory


def unregister(name: str) -> None:
    """Forget a device ``register`` added (``cpu`` and ``cuda`` stay)."""
    if name in ("cpu", "cuda"):
        raise ValueError(f"{name!r} is built in")
    _FACTORIES.pop(name, None)


def device_names() -> tuple[str, ...]:
    """The device names a shell completes: ``auto`` and the registered ones (``cpu``, ``cuda``, …)."""
    return ("auto", *_FACTORIES)


def get_backend(device: str | Backend = "cpu") -> Backend:
    """Choose the backend once. ``auto`` takes CUDA when usable, else the CPU, with a note why."""
    if isinstance(device, Backend):
        return device
    kind, index = parse_device(device)
    if kind != "auto":
        return _FACTORIES[kind](index)
    try:  # auto
        be = _cuda_backend(0)
    except BackendUnavailable as e:
        return dataclasses.replace(CPU, note=f"auto chose cpu: {e}")
    return dataclasses.replace(be, note=f"auto chose {be.name}")
