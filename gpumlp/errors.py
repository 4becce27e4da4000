"""Exceptions a user can cause. The CLI turns each into one line on stderr and exit code 2."""


class GpumlpError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class BackendUnavailable(GpumlpError):
    """The requested device cannot be used (no CuPy, no GPU, no such GPU)."""


class ConfigError(GpumlpError, ValueError):
    """A size, rate or option that cannot work."""


class DataError(GpumlpError):
    """MNIST is missing, corrupt or cannot be downloaded."""


class CheckpointError(GpumlpError):
    """A checkpoint cannot be read or written."""


class ExportError(GpumlpError):
    """A network cannot be written in another format (ONNX), or its package is missing."""


class SweepError(GpumlpError):
    """A sweep's space file, study or storage cannot be used (``gpumlp sweep``)."""
