"""Shared fixtures: the backends under test and small deterministic data."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from gpumlp.backends import registry
from gpumlp.backends.registry import get_backend
from gpumlp.data.load import default_cache_dir, locate_mnist
from gpumlp.errors import BackendUnavailable, GpumlpError
from standins.fake_device import FAKE
from standins.local_server import local_server, refusing_url
from standins.postgres import postgres_server

DATA_FIXTURES = {"mnist_dir", "mnist"}  # the fixtures that need the real MNIST files


def pytest_addoption(parser):
    parser.addoption(
        "--data-dir",
        default=None,
        help="Folder with the MNIST files (as gpumlp's --data-dir); else $GPUMLP_DATA_DIR, else gpumlp's cache folder.",
    )


def pytest_configure(config):
    registry.register("fake", lambda index: FAKE)  # device="fake": the strict fake device, in every test
    # The tests' child processes must see Ctrl-C as a terminal's user sends it. Started in the
    # background (`nohup pytest &`, `pytest &` in a script) this process ignores SIGINT, and an
    # ignored signal stays ignored in every child: Python would then install no handler there and a
    # test's SIGINT would do nothing. A handler set here is reset to the default in each child.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Where the user's data is, read before _private_cache points XDG_CACHE_HOME at a temporary folder.
    # Relative paths are resolved once, here: some tests change the working directory.
    given = config.getoption("--data-dir") or os.environ.get("GPUMLP_DATA_DIR")
    config._gpumlp_data_dir = Path(given).expanduser().resolve() if given else None
    config._gpumlp_user_cache = default_cache_dir()
    config._gpumlp_mnist = None


def _find_mnist(config) -> Path:
    """The folder holding the four MNIST files: --data-dir, else $GPUMLP_DATA_DIR, else gpumlp's
    cache folder (~/.cache/gpumlp/mnist) — downloaded there once, through gpumlp's verified
    download, when missing. Without data and without network, one message ends the session."""
    folder = config._gpumlp_data_dir or config._gpumlp_user_cache
    try:
        paths = locate_mnist(folder, download=True)
    except GpumlpError as e:
        pytest.exit(
            f"gpumlp's tests need the MNIST files and could not get them: {e} (.gz or raw IDX files; "
            "for the tests: pytest --data-dir DIR, or GPUMLP_DATA_DIR=DIR)",
            returncode=3,
        )
    return next(iter(paths.values())).parent  # gpumlp looks in one folder: all four are there


def _cuda_reason() -> str | None:
    """None when a CUDA device is usable here, else why not (printed with the skip)."""
    try:
        get_backend("cuda")
    except BackendUnavailable as e:
        return str(e)
    return None


def pytest_collection_modifyitems(config, items):
    if any(DATA_FIXTURES & set(getattr(item, "fixturenames", ())) for item in items):
        config._gpumlp_mnist = _find_mnist(config)
        # gpumlp itself (CLI runs, subprocesses) finds the same folder, whatever the working directory
        os.environ["GPUMLP_DATA_DIR"] = str(config._gpumlp_mnist)
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _cuda_reason()
    if reason is not None:
        skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {reason}")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", "fake", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    """Every device the math must work on: numpy; the strict fake device (tests/standins/fake_device.py,
    registered as ``"fake"`` for the whole session), which fails on the host/device mixing that only
    a real GPU would catch; CuPy when usable."""
    return request.param


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No test sees the user's cache, data folder or proxies."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("GPUMLP_DATA_DIR", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def server():
    """A local HTTP server (tests/standins/local_server.py): ``server.routes[path] = serve(body)``."""
    with local_server() as srv:
        yield srv


@pytest.fixture
def refused_url():
    """A URL on 127.0.0.1 whose port is bound but not listening: connections are refused."""
    with refusing_url() as url:
        yield url


@pytest.fixture(scope="module")
def host_library(tmp_path_factory):
    """Every kernel built for the host (tests/standins/kernel_harness.py), as a loaded library."""
    from standins import kernel_harness  # imports gpumlp.backends.cuda: only for the tests that need it

    if kernel_harness.NVCC is None and kernel_harness.CXX is None:
        pytest.skip("neither nvcc nor a C++ compiler is installed")
    return kernel_harness.build_kernels(tmp_path_factory.mktemp("kernels"))


@pytest.fixture
def host_cuda(host_library, monkeypatch):
    """A CupyBackend whose kernels run on the host library (``kernel_harness.host_backend``)."""
    from standins.kernel_harness import host_backend

    return host_backend(host_library, monkeypatch)


@pytest.fixture(scope="module")
def cublas_standin(tmp_path_factory):
    """The stand-in libcublas (tests/standins/cublas.py), built with the host C++ compiler: its path."""
    from standins import cublas

    if cublas.CXX is None:
        pytest.skip("no C++ compiler is installed")
    return cublas.build_cublas(tmp_path_factory.mktemp("cublas"))


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
def mnist_dir(request) -> Path:
    """The real MNIST folder, found the way ``gpumlp`` finds it (see ``_find_mnist``), absolute."""
    return request.config._gpumlp_mnist


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """(X_train, y_train, X_test, y_test) on the host, loaded once per test session."""
    from gpumlp.data.load import load_mnist

    return load_mnist(mnist_dir, download=False)


@pytest.fixture
def batch():
    """Seven random 'images' in [0, 1] and labels, float64 on the host."""
    rng = np.random.default_rng(42)
    return rng.random((7, 784)), rng.integers(0, 10, 7)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (tests/standins/postgres.py) for the whole session, stopped at its end;
    skipped, saying which binary is missing, without Debian's PostgreSQL server binaries."""
    with postgres_server() as srv:
        yield srv


@pytest.fixture(scope="session")
def postgres_url(postgres) -> str:
    """The SQLAlchemy URL of database ``gpumlp`` on the session's server: ``postgresql+psycopg://…``."""
    pytest.importorskip("psycopg", reason="psycopg (the sweep and test extras) talks to PostgreSQL")
    return postgres.create_database("gpumlp")


_DATABASES = itertools.count()  # postgres_db_url's database names: test_0, test_1, …


@pytest.fixture
def postgres_db_url(postgres) -> str:
    """A database of this test's own on the session's server (dropped after it): its SQLAlchemy URL."""
    pytest.importorskip("psycopg", reason="psycopg (the sweep and test extras) talks to PostgreSQL")
    name = f"test_{next(_DATABASES)}"
    yield postgres.create_database(name)
    postgres.drop_database(name)
