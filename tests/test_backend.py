"""Device selection: numpy on the CPU, CuPy only when asked, and a one-line reason when it can't."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from gpumlp.backend import CPU, describe_devices, get_backend, parse_device
from gpumlp.errors import BackendUnavailable


class FakeCudaError(RuntimeError):
    pass


def fake_cupy(n_devices: int | None) -> types.ModuleType:
    """A stand-in ``cupy`` module: ``None`` devices means the driver is missing."""
    cp = types.ModuleType("cupy")

    def get_device_count():
        if n_devices is None:
            raise FakeCudaError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
        return n_devices

    cp.current = None

    class Device:
        def __init__(self, i):
            self.id = i

        def use(self):
            cp.current = self.id

    def properties(i):
        return {"name": f"Fake GPU {i}".encode(), "totalGlobalMem": 80 * 2**30, "major": 9, "minor": 0}

    runtime = types.SimpleNamespace(
        getDeviceCount=get_device_count, runtimeGetVersion=lambda: 12040, getDeviceProperties=properties
    )
    cp.cuda = types.SimpleNamespace(runtime=runtime, Device=Device)
    cp.__version__ = "14.0.0"
    return cp


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("cpu", ("cpu", None)),
        ("CPU", ("cpu", None)),
        ("auto", ("auto", None)),
        ("cuda", ("cuda", 0)),
        ("cuda:3", ("cuda", 3)),
    ],
)
def test_parse_device(spec, expected):
    assert parse_device(spec) == expected


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:-1", "cuda:x", "tpu:0", ""])
def test_unknown_device_names_the_choices(spec):
    with pytest.raises(BackendUnavailable, match="auto, cpu, cuda or cuda:N"):
        parse_device(spec)


def test_cpu_is_numpy():
    be = get_backend("cpu")
    assert be is CPU and be.xp is np and not be.is_cuda
    a = np.arange(3)
    assert be.to_numpy(be.asarray(a)) is not None
    np.testing.assert_array_equal(be.to_numpy(be.asarray(a, dtype=np.float32)), [0, 1, 2])


def test_cuda_without_cupy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(BackendUnavailable) as e:
        get_backend("cuda")
    assert "pip install 'gpumlp[cuda12]'" in str(e.value) and "cuda13" in str(e.value)
    assert "\n" not in str(e.value)


def test_cuda_with_cupy_but_no_driver_gives_cupys_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(None))
    with pytest.raises(BackendUnavailable, match="cudaErrorInsufficientDriver.*--device cpu"):
        get_backend("cuda:0")


def test_cuda_with_zero_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(0))
    with pytest.raises(BackendUnavailable, match="no GPU"):
        get_backend("cuda")


def test_cuda_n_chooses_that_gpu_and_refuses_one_beyond_the_count(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(2))
    be = get_backend("cuda:1")
    assert be.name == "cuda:1" and be.device_id == 1 and be.is_cuda and be.xp is sys.modules["cupy"]
    assert sys.modules["cupy"].current == 1  # made the current device, where CuPy launches kernels
    with pytest.raises(
        BackendUnavailable, match=r"cuda:5 does not exist: this machine has 2 GPUs \(cuda:0 to cuda:1\)"
    ):
        get_backend("cuda:5")


def test_auto_falls_back_to_cpu_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(None))
    be = get_backend("auto")
    assert be.name == "cpu" and be.xp is np
    assert be.note.startswith("auto chose cpu") and "cudaErrorInsufficientDriver" in be.note


def test_auto_takes_cuda_when_usable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(1))
    be = get_backend("auto")
    assert be.name == "cuda:0" and be.note == "auto chose cuda:0"


def test_importing_gpumlp_and_cpu_training_never_import_cupy(tmp_path):
    """A real subprocess: the CPU path must not pay for (or depend on) CuPy."""
    code = (
        "import sys, numpy as np, gpumlp\n"
        "m = gpumlp.MLP((784, 8, 10), device='cpu')\n"
        "rng = np.random.default_rng(0)\n"
        "gpumlp.fit(m, rng.random((50, 784)), rng.integers(0, 10, 50), epochs=1, batch_size=10, lr=1.0, seed=0)\n"
        "gpumlp.save(sys.argv[1], m); gpumlp.load(sys.argv[1], device='cpu')\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.npz")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_devices_lists_every_gpu_and_the_auto_choice(monkeypatch):
    from typer.testing import CliRunner

    from gpumlp import cli

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(2))
    d = describe_devices()
    assert d["cupy"] == {"version": "14.0.0", "cuda_runtime": "12.4"} and d["auto"] == "cuda:0"
    assert d["gpus"][1] == {"device": "cuda:1", "name": "Fake GPU 1", "memory_gib": 80.0, "compute_capability": "9.0"}
    out = CliRunner().invoke(cli.app, ["devices"]).output
    assert "cuda:1         Fake GPU 1, 80.0 GiB, compute capability 9.0" in out and "--device auto  cuda:0" in out
    assert d["numpy"] == np.__version__ and d["blas"]


@pytest.mark.parametrize(
    "cupy,reason",
    [(None, "CuPy is not installed: pip install 'gpumlp[cuda12]'"), ("no-driver", "cudaErrorInsufficientDriver")],
)
def test_devices_says_why_there_is_no_gpu(monkeypatch, cupy, reason):
    monkeypatch.setitem(sys.modules, "cupy", None if cupy is None else fake_cupy(None))
    d = describe_devices()
    assert d["gpus"] == [] and reason in d["reason"] and d["auto"] == "cpu"
