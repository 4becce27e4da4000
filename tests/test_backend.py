"""Device selection: numpy on the CPU, CuPy only when asked, and a one-line reason when it can't."""

from __future__ import annotations

import re
import subprocess
import sys
import types

import numpy as np
import pytest

from gpumlp.backends.cpu import CPU
from gpumlp.backends.registry import get_backend, parse_device
from gpumlp.cli.devices import describe_devices
from gpumlp.errors import BackendUnavailable
from standins.fake_cupy import fake_cupy


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
    fake_cupy(2, monkeypatch=monkeypatch)
    be = get_backend("cuda:1")
    assert be.name == "cuda:1" and be.device_id == 1 and be.is_cuda and be.xp is sys.modules["cupy"]
    assert sys.modules["cupy"].current == 1  # made the current device, where CuPy launches kernels
    with pytest.raises(BackendUnavailable, match=r"cuda:5 does not exist: CUDA sees 2 GPUs \(cuda:0 to cuda:1\)"):
        get_backend("cuda:5")


def test_auto_falls_back_to_cpu_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(None))
    be = get_backend("auto")
    assert be.name == "cpu" and be.xp is np
    assert be.note.startswith("auto chose cpu") and "cudaErrorInsufficientDriver" in be.note


def test_auto_takes_cuda_when_usable(monkeypatch):
    fake_cupy(1, monkeypatch=monkeypatch)
    be = get_backend("auto")
    assert be.name == "cuda:0" and be.note == "auto chose cuda:0"


@pytest.mark.parametrize(
    "fail,message",
    [
        ("cublas", r"CuPy cannot load cuBLAS on cuda:0 \(Failure finding \"libcublasLt.so.12\".*\): install"),
        ("nvrtc", r"CuPy cannot compile kernels on cuda:0: NVRTC is missing \(.*libnvrtc.so.12.*\); install"),
        ("launch", r"a test kernel failed on cuda:0 \(CUDA_ERROR_UNSUPPORTED_PTX_VERSION.*\): the NVIDIA driver"),
        ("wrong", r"cuda:0 computed a test kernel wrongly"),
    ],
)
def test_choosing_cuda_probes_what_training_uses(monkeypatch, fail, message):
    """CuPy imports and sees a GPU, but a library or the first kernel fails: one line naming the
    fix (the cuda12/cuda13 extras bring the libraries), no traceback, and ``auto`` takes the CPU."""
    fake_cupy(1, fail, monkeypatch)
    with pytest.raises(BackendUnavailable, match=message) as e:
        get_backend("cuda")
    assert "\n" not in str(e.value)
    if fail in ("cublas", "nvrtc"):
        assert "pip install 'gpumlp[cuda12]'" in str(e.value) and "--device cpu" in str(e.value)
    be = get_backend("auto")
    assert be.name == "cpu" and be.xp is np and be.note.startswith("auto chose cpu: ")
    assert re.search(message, be.note)


def test_cli_reports_a_failed_probe_in_one_line_exit_2(monkeypatch):
    from typer.testing import CliRunner

    from gpumlp.cli import commands as cli

    fake_cupy(1, "cublas", monkeypatch)
    out = CliRunner().invoke(cli.app, ["test", "missing.npz", "--device", "cuda"])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "error: CuPy cannot load cuBLAS on cuda:0" in out.output


def test_the_probe_runs_on_the_chosen_gpu(monkeypatch):
    cp = fake_cupy(3, monkeypatch=monkeypatch)
    be = get_backend("cuda:2")
    assert cp.entered == [2] and cp.current == 2  # probed inside cuda:2's context, then made current
    assert be.tf32 is False and be.compiles_kernels
    with be.activate():  # the context fit and the model enter: cuda:2's
        pass
    assert cp.entered == [2, 2]


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

    from gpumlp.cli import commands as cli

    fake_cupy(2, monkeypatch=monkeypatch)
    assert describe_devices()["auto"] == "cuda:0"
    fake_cupy(2, "nvrtc", monkeypatch)  # GPUs listed, but choosing one would fail: auto says cpu, and why
    d = describe_devices()
    assert len(d["gpus"]) == 2 and d["auto"] == "cpu" and "NVRTC is missing" in d["reason"]
    fake_cupy(2, monkeypatch=monkeypatch)
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


def test_the_cuda_extras_bring_cupys_libraries():
    """The extras ask for CuPy's ctk extra (cuda-toolkit[cublas,nvrtc,…] in the wheels' metadata):
    plain CuPy loads cuBLAS and NVRTC from a system CUDA Toolkit only."""
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extras = meta["project"]["optional-dependencies"]
    assert extras["cuda12"] == ["cupy-cuda12x[ctk]>=14"] and extras["cuda13"] == ["cupy-cuda13x[ctk]>=14"]
    deps = meta["project"]["dependencies"]  # numpy, typer, rich (the bar), tomli before 3.11: no CuPy
    assert [d.split(">=")[0] for d in deps] == ["numpy", "typer", "rich", "tomli"]


def test_choosing_cuda_turns_tf32_off_for_every_product(monkeypatch):
    """The cuBLAS handle gets the default math mode (no TF32) for cupy.cublas.gemm; with CuPy's
    float32 compute-type switch, it is pinned to FP32 and the products use cupy.matmul; without the
    switch, every product goes through cupy.cublas.gemm, so CUPY_TF32 reaches none of them."""
    monkeypatch.setenv("CUPY_TF32", "1")
    cp = fake_cupy(1, monkeypatch=monkeypatch)
    cp.matmul = np.matmul
    be = get_backend("cuda")
    assert cp.math_modes == [(1234, 0)] and be.tf32 is False
    assert be.matmul_function() is not cp.matmul  # no switch in the stand-in: gemm for all
    A, B = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(be.matmul_function()(A, B), A @ B)

    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_FP32, linalg.set = 4, {}
    linalg.set_compute_type = lambda dtype, kind: linalg.set.__setitem__(dtype, kind)
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", linalg)
    be = get_backend("cuda")
    assert linalg.set == {np.dtype(np.float32): 4} and be.matmul_function() is cp.matmul


def test_a_registered_device_name_resolves_through_the_registry():
    """``register`` adds a name (the tests' ``fake``): ``name`` and ``name:N`` reach its factory, and
    ``MLP(device=name)`` gets the backend it makes; built-in names cannot be dropped."""
    from gpumlp.backends import registry
    from gpumlp.model import MLP

    seen = []
    registry.register("spare", lambda index: seen.append(index) or CPU)
    try:
        assert parse_device("spare:2") == ("spare", 2) and parse_device("Spare") == ("spare", None)
        assert get_backend("spare:2") is CPU and MLP((784, 10), device="spare").be is CPU
        assert seen == [2, None]
    finally:
        registry.unregister("spare")
    with pytest.raises(BackendUnavailable, match="unknown device 'spare'"):
        get_backend("spare")
    for bad in ("auto", "Cuda", "a:b", ""):
        with pytest.raises(ValueError):
            registry.register(bad, lambda index: CPU)
    with pytest.raises(ValueError, match="built in"):
        registry.unregister("cuda")
