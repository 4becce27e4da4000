"""The CUDA path against the real CuPy (CI installs the cuda12 extra), and on a real GPU.

Without a usable GPU: every way of asking for CUDA is one line and exit code 2, ``auto`` falls
back to the CPU and says so. Tests marked ``gpu`` need a GPU and are skipped, with the reason
printed, everywhere else (``scripts/gpu_check.sh`` runs them on a machine that has one).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpumlp.backends.registry import get_backend
from gpumlp.errors import BackendUnavailable
from gpumlp.formats import checkpoint
from gpumlp.model import MLP
from gpumlp.training.loop import fit

_SCRIPT = Path(sys.executable).parent / "gpumlp"
# The console script, or the module where gpumlp runs from a checkout without an install.
GPUMLP = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gpumlp"]


def _cupy_without_gpu():
    cp = pytest.importorskip("cupy", reason="CuPy is not installed here (CI installs it with the cuda12 extra)")
    if cp.is_available():
        pytest.skip("a CUDA GPU is usable here: the no-GPU behaviour cannot be observed")
    return cp


def gpumlp_cli(*args, env=None):
    return subprocess.run([*GPUMLP, *args], capture_output=True, text=True, timeout=120, env=env)


def test_real_cupy_without_gpu_gives_cupys_reason():
    _cupy_without_gpu()
    for spec in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(BackendUnavailable) as e:
            get_backend(spec)
        message = str(e.value)
        assert message.startswith("CuPy is installed but no usable CUDA GPU was found (")
        assert "cuda" in message.lower() and "\n" not in message


@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cli_cuda_without_gpu_is_one_line_exit_2(spec, tmp_path):
    _cupy_without_gpu()
    for command in (["train", "--epochs", "1"], ["test", str(tmp_path / "x.npz")]):
        out = gpumlp_cli(*command, "--device", spec)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("error: CuPy is installed but no usable CUDA GPU") and out.stderr.count("\n") == 1
        assert "Traceback" not in out.stderr and out.stdout == ""


def test_cli_auto_falls_back_to_cpu_and_says_so(tmp_path, mnist_dir):
    _cupy_without_gpu()
    args = ["train", "--device", "auto", "--epochs", "1", "--train-size", "1000", "--val-size", "0", "--test-size", "0"]
    out = gpumlp_cli(*args, "--data-dir", str(mnist_dir), "--save", str(tmp_path / "a.npz"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("auto chose cpu: CuPy is installed but no usable CUDA GPU")
    assert "device='cpu'" in out.stdout
    assert checkpoint.read_metadata(tmp_path / "a.npz")["device"] == "cpu"


def test_cpu_train_and_test_never_import_cupy_even_when_installed(tmp_path, mnist_dir):
    pytest.importorskip("cupy", reason="CuPy is not installed here (CI installs it with the cuda12 extra)")
    code = (
        "import sys\n"
        "from gpumlp.cli import commands as cli\n"
        "for argv in (['gpumlp', 'train', '--epochs', '1', '--train-size', '500', '--val-size', '100',\n"
        "              '--test-size', '100', '--save', sys.argv[1]], ['gpumlp', 'test', sys.argv[1]]):\n"
        "    sys.argv = argv\n"
        "    try:\n"
        "        cli.main()\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
        "print('no cupy')\n"
    )
    env = dict(os.environ, GPUMLP_DATA_DIR=str(mnist_dir))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.npz")], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("no cupy")


# ---------------------------------------------------------------- on a real GPU


@pytest.mark.gpu
@pytest.mark.parametrize("fuse_all", [False, True])
def test_gpu_training_agrees_with_cpu(fuse_all, monkeypatch):
    """Same seed, same batches: after 300 float64 SGD steps the GPU's parameters match the CPU's;
    with ``fuse_all`` every weight matrix takes its step inside backward (cuBLAS gemm with β = 1)."""
    if fuse_all:
        monkeypatch.setattr("gpumlp.optim.FUSE_MIN_WEIGHTS", 0)
    rng = np.random.default_rng(0)
    X, y = rng.random((600, 784)), rng.integers(0, 10, 600)
    thetas = {}
    for device in ("cpu", "cuda"):
        m = MLP((784, 32, 16, 10), "sigmoid", "mse", seed=1, device=device, dtype="float64")
        fit(m, X, y, epochs=5, batch_size=10, lr=1.0, seed=2)
        thetas[device] = m.be.to_numpy(m.theta)
    np.testing.assert_allclose(thetas["cuda"], thetas["cpu"], rtol=1e-6, atol=1e-9)


@pytest.mark.gpu
def test_a_gpu_run_repeats_bit_for_bit():
    """Same seed, same GPU, same CuPy: float32 runs with every fused kernel (Adam with weight decay,
    dropout, augmentation) end with identical parameters (no atomics anywhere)."""
    rng = np.random.default_rng(0)
    X, y = rng.random((500, 784)), rng.integers(0, 10, 500)
    thetas = []
    for _ in range(2):
        m = MLP((784, 64, 32, 10), "relu", "ce", seed=1, device="cuda")
        fit(m, X, y, epochs=2, batch_size=32, lr=1e-3, seed=2, optimizer="adam", weight_decay=1e-4, dropout=0.1,
            augment="affine,elastic", X_val=X[:100], y_val=y[:100])  # fmt: skip
        thetas.append(m.be.to_numpy(m.theta))
    np.testing.assert_array_equal(thetas[0], thetas[1])


@pytest.mark.gpu
@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_checkpoint_gpu_to_cpu_and_back_is_bit_exact(tmp_path, suffix):
    gpu = MLP((784, 32, 10), "relu", "ce", seed=4, device="cuda")
    checkpoint.save(tmp_path / f"g{suffix}", gpu)
    cpu, meta = checkpoint.load(tmp_path / f"g{suffix}", device="cpu")
    np.testing.assert_array_equal(cpu.theta, gpu.be.to_numpy(gpu.theta))
    assert meta["device"].startswith("cuda:") and "cupy" in meta["versions"]
    assert meta["tf32"] is False  # what ran: float32 products in float32, whatever CUPY_TF32 says
    checkpoint.save(tmp_path / f"c{suffix}", cpu)
    back, _ = checkpoint.load(tmp_path / f"c{suffix}", device="cuda")
    np.testing.assert_array_equal(back.be.to_numpy(back.theta), cpu.theta)


@pytest.mark.gpu
def test_one_epoch_on_the_gpu_reaches_the_cpu_accuracy_band(tmp_path, mnist_dir):
    out = gpumlp_cli(
        "train", "--device", "cuda", "--epochs", "1", "--data-dir", str(mnist_dir), "--save", str(tmp_path / "g.npz")
    )
    assert out.returncode == 0, out.stderr
    assert float(re.search(r"test accuracy (\S+)%", out.stdout).group(1)) >= 90.0
