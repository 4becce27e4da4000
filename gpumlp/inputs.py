"""What the API accepts as images: pixels scaled to [0, 1] (float) or raw 0–255 bytes (uint8, as
``gpumlp.data.idx.read_idx`` returns them), never NaN, Inf or values outside, checked as the CLI's
own data is. One reduction per call of ``fit``, ``evaluate`` or ``predict``: never per batch."""

from __future__ import annotations

import numpy as np

from gpumlp.backends.base import Backend
from gpumlp.errors import ConfigError

SCALE_HINT = "divide 0-255 pixels by 255 (as load_mnist does), or pass them as uint8"


def is_bytes(X) -> bool:
    """Whether ``X`` holds raw 0–255 pixels (uint8), which the network divides by 255 itself."""
    return np.dtype(getattr(X, "dtype", None) or np.float64) == np.uint8


def check_pixels(be: Backend, arrays: dict) -> None:
    """Refuse image arrays ``{name: X (n, 784)}`` (host or device) holding NaN, Inf or values outside
    [0, 1]. The minimum and maximum of every array on the device come back in one transfer (a sync
    point); host arrays are reduced on the host. uint8 arrays need no check."""
    names, device, host = [], [], []
    for name, X in arrays.items():
        if X is None or is_bytes(X) or not getattr(X, "size", len(X)):
            continue
        names.append(name)
        if isinstance(X, np.ndarray) or not hasattr(X, "dtype"):
            X = np.asarray(X, dtype=np.float64)
            host.append(np.array([X.min(), X.max()], dtype=np.float64))
        else:
            device.append(be.xp.stack([X.min(), X.max()]).astype(be.xp.float64))
    if not names:
        return
    on_device = list(be.to_numpy(be.xp.concatenate(device)).reshape(-1, 2)) if device else []
    bounds = iter(on_device)
    for name, X in ((n, arrays[n]) for n in names):
        on_host = isinstance(X, np.ndarray) or not hasattr(X, "dtype")
        lo, hi = host.pop(0) if on_host else next(bounds)
        _refuse(name, float(lo), float(hi))


def _refuse(name: str, lo: float, hi: float) -> None:
    if np.isnan(lo) or np.isnan(hi):  # min and max are NaN wherever one pixel is
        raise ConfigError(f"{name} holds NaN: every pixel must be a number in [0, 1]; drop or repair those images")
    if np.isinf(lo) or np.isinf(hi):
        raise ConfigError(f"{name} holds infinite values: every pixel must be a number in [0, 1]")
    if lo < 0.0 or hi > 1.0:
        raise ConfigError(f"{name} holds values from {lo:g} to {hi:g}, outside [0, 1]: {SCALE_HINT}")
