"""The run-state schema: one epoch's numbers (``EpochStats``), where a run stands (``TrainState``),
and what each of their fields may hold in a checkpoint (``EPOCH_FIELDS``, ``TRAIN_STATE_FIELDS``).

Training writes these, run files save them, ``gpumlp.formats.metadata`` checks them when a file is
read, and ``gpumlp plot`` reads the metrics file's ``METRICS_KEYS``: each field is declared here once.
This module imports nothing from gpumlp but its errors, so the checkpoint layer can import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gpumlp.errors import ConfigError


def is_number(v) -> bool:
    """A finite JSON number (not a bool, not an integer too large for a float)."""
    if type(v) is int:
        return abs(v) < 2**63
    return type(v) is float and math.isfinite(v)


def is_count(v) -> bool:
    return type(v) is int and 0 <= v < 2**63


def or_none(check):
    return lambda v: v is None or check(v)


def is_rng_state(v) -> bool:
    """A permutation generator's ``bit_generator.state`` that numpy accepts (checked on a scratch one)."""
    try:
        np.random.PCG64().state = v
    except (TypeError, ValueError, KeyError, OverflowError):
        return False
    return True


@dataclass
class EpochStats:
    epoch: int
    train_loss: float  # mean loss over the epoch's batches
    val_accuracy: float | None  # fraction in [0, 1]; None without a validation set
    seconds: float  # wall time of the epoch, training and validation, device synchronised
    lr: float  # the options that may change when a run is resumed, as used in this epoch
    batch_size: int
    val_loss: float | None = None  # mean loss on the validation set
    images_per_s: float | None = None  # training throughput, validation excluded


# Field → (check, what it must be), for a checkpoint's history and train_state. A field that is
# absent is not checked; ``None`` is "unknown".
EPOCH_FIELDS = {
    "epoch": (is_count, "an epoch number"),
    "batch_size": (is_count, "an integer"),
    "train_loss": (is_number, "a number"),
    "val_accuracy": (or_none(is_number), "a number"),
    "val_loss": (or_none(is_number), "a number"),
    "seconds": (or_none(is_number), "a number"),
    "lr": (or_none(is_number), "a number"),
    "images_per_s": (or_none(is_number), "a number"),
}
EPOCH_REQUIRED = ("epoch", "train_loss")  # what every epoch has had since the first gpumlp
METRICS_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy")  # what ``gpumlp plot`` reads of each epoch
TRAIN_STATE_FIELDS = {
    "epochs_done": (is_count, "a count of epochs"),
    "rng_state": (or_none(is_rng_state), "the batch-order generator's state (a PCG64 state object)"),
    "best_epoch": (or_none(is_count), "an epoch number or null"),
    "best_score": (or_none(is_number), "a number or null"),
    "stopped_epoch": (or_none(is_count), "an epoch number or null"),
    "weights_epoch": (or_none(is_count), "an epoch number or null"),
    "blas_threads": (or_none(lambda v: is_count(v) and v >= 1), "a thread count (1 or more) or null"),
}


@dataclass
class TrainState:
    """Where a run stands after its last completed epoch: enough to continue it exactly.

    ``optimizer`` and ``arrays`` carry what a checkpoint holds beyond the parameters: the
    optimiser's description and its state buffers, and early stopping's best weights (device
    arrays during a run, host arrays when loaded), each a flat (n_params,) vector.
    """

    epochs_done: int = 0
    rng_state: dict | None = None  # the permutation generator's bit_generator.state; None: fresh
    history: list[EpochStats] = field(default_factory=list)
    optimizer: dict | None = None  # Optimizer.state()'s description; None: fresh
    best_epoch: int | None = None  # early stopping: the epoch with the best validation score so far
    best_score: float | None = None  # that score (accuracy, or loss)
    stopped_epoch: int | None = None  # the epoch early stopping ended the run after; None: it did not
    weights_epoch: int | None = None  # the epoch whose weights the model holds (the best, once restored)
    blas_threads: int | None = None  # the CPU BLAS's thread count (some products round differently with another)
    arrays: dict = field(default_factory=dict)  # "optimizer.NAME", "best_theta", "last_theta"

    def to_dict(self) -> dict:
        """The checkpoint's ``train_state``: every field of ``TRAIN_STATE_FIELDS``."""
        return {k: getattr(self, k) for k in TRAIN_STATE_FIELDS}

    @classmethod
    def from_metadata(cls, meta: dict) -> TrainState:
        try:
            history = [EpochStats(**e) for e in meta.get("history", [])]
            state = meta["train_state"]
            extra = {k: state.get(k) for k in TRAIN_STATE_FIELDS if k not in ("epochs_done", "rng_state")}
            optimizer = meta.get("optimizer") or {"name": "sgd"}
            return cls(int(state["epochs_done"]), dict(state["rng_state"]), history, dict(optimizer),
                       **extra, arrays=dict(meta.get("state_arrays") or {}))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"the checkpoint holds a network but no training run to resume (no usable {e}): a converted "
                "network or one saved without its run's state; start a new run (gpumlp train without --resume)"
            ) from None
