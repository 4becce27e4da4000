"""gpumlp: a from-scratch multilayer perceptron for MNIST on numpy (CPU) or CuPy (CUDA GPU).

The public names below are imported on first use, so ``gpumlp --help`` and other commands that
need no arrays start without importing numpy.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Backend": "gpumlp.backend",
    "get_backend": "gpumlp.device",
    "load": "gpumlp.checkpoint",
    "save": "gpumlp.checkpoint",
    "load_dataset": "gpumlp.data",
    "load_mnist": "gpumlp.data",
    "read_idx": "gpumlp.data",
    "BackendUnavailable": "gpumlp.errors",
    "CheckpointError": "gpumlp.errors",
    "ConfigError": "gpumlp.errors",
    "DataError": "gpumlp.errors",
    "GpumlpError": "gpumlp.errors",
    "MLP": "gpumlp.model",
    "TrainConfig": "gpumlp.config",
    "preset_config": "gpumlp.presets",
    "PRESETS": "gpumlp.presets",
    "AugmentConfig": "gpumlp.augment",
    "Augmenter": "gpumlp.augment",
    "make_optimizer": "gpumlp.optim",
    "evaluate": "gpumlp.evaluation",
    "fit": "gpumlp.train",
    "run": "gpumlp.train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gpumlp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
