"""gpumlp: a from-scratch multilayer perceptron for MNIST on numpy (CPU) or CuPy (CUDA GPU)."""

__version__ = "0.1.0"

from gpumlp.backend import Backend, get_backend
from gpumlp.checkpoint import load, save
from gpumlp.data import load_mnist, read_idx
from gpumlp.errors import BackendUnavailable, CheckpointError, ConfigError, DataError, GpumlpError
from gpumlp.model import MLP
from gpumlp.train import TrainConfig, evaluate, fit, run

__all__ = [
    "MLP",
    "Backend",
    "BackendUnavailable",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "GpumlpError",
    "TrainConfig",
    "evaluate",
    "fit",
    "get_backend",
    "load",
    "load_mnist",
    "read_idx",
    "run",
    "save",
]
