"""Shared fixtures: the backends under test and small deterministic data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gpumlp.backend import get_backend
from gpumlp.errors import BackendUnavailable

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "mnist"


def _cuda_reason() -> str | None:
    """None when a CUDA device is usable here, else why not (printed with the skip)."""
    try:
        get_backend("cuda")
    except BackendUnavailable as e:
        return str(e)
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _cuda_reason()
    if reason is not None:
        skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {reason}")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", "fake", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request, monkeypatch) -> str:
    """Every device the math must work on: numpy; the strict fake device (tests/fake_device.py),
    which fails on the host/device mixing that only a real GPU would catch; CuPy when usable."""
    if request.param == "fake":
        use_fake_device(monkeypatch)
    return request.param


def use_fake_device(monkeypatch) -> None:
    """Make ``device="fake"`` mean the strict fake device wherever gpumlp builds a model."""
    from fake_device import FAKE

    import gpumlp.model

    original = gpumlp.model.get_backend
    monkeypatch.setattr(gpumlp.model, "get_backend", lambda d="cpu": FAKE if d == "fake" else original(d))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tests never write into the user's ~/.cache: the decoded-MNIST cache goes to a temporary folder."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST folder from $GPUMLP_DATA_DIR (CI sets it to ../shared/mnist)."""
    d = os.environ.get("GPUMLP_DATA_DIR")
    if not d:
        pytest.fail("GPUMLP_DATA_DIR is not set: point it at the MNIST folder (e.g. ../shared/mnist)")
    return Path(d)


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """(X_train, y_train, X_test, y_test) on the host, loaded once per test session."""
    from gpumlp.data import load_mnist

    return load_mnist(mnist_dir, download=False)


@pytest.fixture
def batch():
    """Seven random 'images' in [0, 1] and labels, float64 on the host."""
    rng = np.random.default_rng(42)
    return rng.random((7, 784)), rng.integers(0, 10, 7)
