"""What ``gpumlp bench`` records beside its timings: the machine it ran on (CPU, BLAS, threads, load,
device) and what gpumlp costs seen from outside, in fresh processes (peak memory of a training run,
``gpumlp --help``'s wall time, loading MNIST with a warm cache).
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gpumlp.backends.base import Backend
from gpumlp.backends.cpu import CPU
from gpumlp.errors import GpumlpError

ENV_SHOWN = (
    "GPUMLP_DATA_DIR",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "GPUMLP_BLAS",
    "GPUMLP_THREADS",
    "CUPY_TF32",
)


def machine_info(be: Backend) -> dict:
    """CPU model and cores, Python, numpy and its BLAS, thread settings, load and the device."""
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": f"{blas.get('name', '?')} {blas.get('version', '')}".strip(),
        "blas_config": blas.get("openblas configuration"),
        "threads_env": {k: os.environ[k] for k in ENV_SHOWN[1:4] if k in os.environ},
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": be.name + (f" ({be.note})" if be.note else ""),
    }
    if not be.is_cuda:
        info["training_blas"] = CPU.blas.describe()  # what CPU training calls
        from gpumlp.backends import blas_threads

        info["training_threads"] = list(blas_threads.training_threads())  # [count, why], as a new run chooses
    if be.is_cuda:
        props = be.xp.cuda.runtime.getDeviceProperties(be.device_id)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        info["cupy"], info["tf32"] = be.xp.__version__, be.tf32
    return info


def _gpumlp_command() -> list[str]:
    """The installed ``gpumlp`` console script beside this Python, else ``python -m gpumlp``."""
    script = Path(sys.executable).with_name("gpumlp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gpumlp"]


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise GpumlpError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


# A fresh Python that runs one command and prints its peak RSS in KiB (its only child, so RUSAGE_CHILDREN is it).
_RSS = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
_RSS += "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
_LOAD = "import sys, time; from gpumlp.data.load import load_mnist; t0 = time.perf_counter(); "
_LOAD += "load_mnist(sys.argv[1] or None, download=False); print(time.perf_counter() - t0)"


def process_costs(data_dir=None, device: str = "cpu", train_args=("--epochs", "1", "--val-size", "10000")) -> dict:
    """Costs seen from outside, in fresh processes: the peak resident memory of ``gpumlp train``
    (ru_maxrss of that process: interpreter, numpy and its BLAS, the decoded MNIST arrays, the
    network, training, validation, test and save; host memory only), the wall time of ``gpumlp
    --help`` (median of 5, process start included), and of the ``load_mnist()`` call with the
    decoded cache warm (median of 3 after one that warms it; None without MNIST)."""
    gpumlp = _gpumlp_command()
    with tempfile.TemporaryDirectory() as tmp:
        train = [*gpumlp, "train", *train_args, "--device", device, "--save", str(Path(tmp) / "net.npz")]
        train += ["--data-dir", str(data_dir)] if data_dir else []
        rss_kib = int(_run([sys.executable, "-c", _RSS, *train]))
    helps = []
    for _ in range(5):
        t0 = time.perf_counter()
        _run([*gpumlp, "--help"])
        helps.append(time.perf_counter() - t0)
    try:
        loads = [float(_run([sys.executable, "-c", _LOAD, str(data_dir or "")])) for _ in range(4)][1:]
    except GpumlpError:
        loads = None  # no MNIST to load
    return {
        "train_command": shlex.join(train).replace(tmp, "<tmp>"),
        "train_peak_rss_mib": rss_kib / 1024,
        "help_command": shlex.join([*gpumlp, "--help"]),
        "help_seconds": statistics.median(helps),
        "load_mnist_seconds": statistics.median(loads) if loads else None,
    }
