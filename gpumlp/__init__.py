"""gpumlp: a from-scratch multilayer perceptron for MNIST on numpy (CPU) or CuPy (CUDA GPU).

The public names below are imported on first use, so ``gpumlp --help`` and other commands that
need no arrays start without importing numpy.
"""

import importlib as _importlib  # (private: dir(gpumlp) lists the API)

__version__ = "0.1.0"

_EXPORTS = {
    "Backend": "gpumlp.backends.base",
    "get_backend": "gpumlp.backends.registry",
    "load": "gpumlp.formats.checkpoint",
    "save": "gpumlp.formats.checkpoint",
    "load_dataset": "gpumlp.data.load",
    "load_mnist": "gpumlp.data.load",
    "read_idx": "gpumlp.data.idx",
    "load_digit": "gpumlp.data.images",
    "to_mnist": "gpumlp.data.images",
    "preprocess": "gpumlp.data.images",
    "BackendUnavailable": "gpumlp.errors",
    "CheckpointError": "gpumlp.errors",
    "ConfigError": "gpumlp.errors",
    "DataError": "gpumlp.errors",
    "GpumlpError": "gpumlp.errors",
    "MLP": "gpumlp.model",
    "TrainConfig": "gpumlp.training.config",
    "preset_config": "gpumlp.training.config",
    "PRESETS": "gpumlp.training.presets",
    "AugmentConfig": "gpumlp.training.augment",
    "Augmenter": "gpumlp.training.augment",
    "make_optimizer": "gpumlp.optim",
    "evaluate": "gpumlp.training.evaluation",
    "fit": "gpumlp.training.loop",
    "run": "gpumlp.training.run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gpumlp' has no attribute {name!r}")


def __dir__():
    return sorted({*__all__, *(n for n in globals() if n.startswith("__"))})  # the API, not its helpers
