"""What each field of a gpumlp checkpoint's metadata may hold, checked before anything is built.

A checkpoint is a file anyone can edit: every field that gpumlp reads (to build the network, to
resume its run, or for ``gpumlp info``) is checked here for its type and range, so a wrong value
is one line naming the field, never a traceback later nor a silently different network
(``sizes: [784, 10.9]`` is refused, not truncated to 10; ``version: true`` is not version 1).
"""

from __future__ import annotations

from pathlib import Path

from gpumlp.activations import ACTIVATIONS
from gpumlp.data.datasets import DATASETS
from gpumlp.errors import CheckpointError, ConfigError
from gpumlp.formats.base import check_sizes, short
from gpumlp.losses import DEFAULT_FLOOR, LOSSES, choices
from gpumlp.model import DTYPES, INITS
from gpumlp.optim import RULES
from gpumlp.training.state import EPOCH_FIELDS, EPOCH_REQUIRED, TRAIN_STATE_FIELDS, is_count, is_number, or_none


def _object_of(check):
    return lambda v: isinstance(v, dict) and all(check(x) for x in v.values())


# Field → (check, what it must be). A field that is absent is not checked; ``None`` is "unknown".
# The fields of the history's epochs and of train_state are the run state's (gpumlp.training.state).
OPTIMIZER_FIELDS = {
    "name": (lambda v: isinstance(v, str), "an optimiser name"),
    "t": (is_count, "a step count"),
    "weight_decay": (lambda v: is_number(v) and v >= 0, "a number, 0 or more"),
    "hyper": (_object_of(is_number), "an object of numbers"),
}
FIELDS = {
    "activation": (lambda v: v in tuple(ACTIVATIONS), lambda: f"one of {', '.join(ACTIVATIONS)}"),  # registered now
    "loss": (lambda v: v in tuple(LOSSES), lambda: f"one of {choices()}"),  # what is registered when read
    "dtype": (lambda v: v in tuple(DTYPES), f"one of {', '.join(DTYPES)}"),
    "init": (or_none(lambda v: v in INITS), f"one of {', '.join(INITS)} or null"),
    "input_divisor": (lambda v: is_number(v) and v > 0, "a positive number, e.g. 255 (the network sees pixel / it)"),
    "device": (or_none(lambda v: isinstance(v, str)), "a string"),
    "created": (or_none(lambda v: isinstance(v, str)), "a string"),
    "blas": (or_none(lambda v: isinstance(v, str)), "a string"),
    "cupy_tf32": (or_none(lambda v: isinstance(v, str)), "a string or null"),  # files written before "tf32"
    "tf32": (or_none(lambda v: isinstance(v, bool)), "true or false"),
    "versions": (or_none(_object_of(lambda x: x is None or isinstance(x, str))), "an object of version strings"),
    "mnist_sha256": (or_none(_object_of(lambda x: isinstance(x, str))), "an object of SHA-256 strings"),
    "dataset": (lambda v: isinstance(v, str) and v in DATASETS, lambda: f"one of {', '.join(DATASETS)}"),
    "data_checksums": (or_none(lambda v: isinstance(v, dict)), "an object"),
    "test_accuracy": (or_none(lambda v: is_number(v) and 0 <= v <= 1), "a fraction in [0, 1] or null"),
    "test_size": (or_none(is_count), "a count of images"),
    "config": (or_none(lambda v: isinstance(v, dict)), "an object of training options"),
    "history": (or_none(lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v)), "a list of epochs"),
    "train_state": (or_none(lambda v: isinstance(v, dict)), "an object"),
    "optimizer": (or_none(lambda v: isinstance(v, dict)), "an object"),
    "confidence_floor": (
        or_none(lambda v: _is_floor(v)),
        '{"value": a fraction, "fraction": a fraction, "images": a count}',
    ),
}


def _is_floor(v) -> bool:
    """``{"value", "fraction", "images"}``: the network's "not sure" floor (gpumlp/losses.py) and
    what it was chosen on."""
    return (
        isinstance(v, dict)
        and all(is_number(v.get(k)) and 0 <= v[k] <= 1 for k in ("value", "fraction"))
        and is_count(v.get("images"))
    )


def confidence_floor(meta: dict) -> float:
    """The top confidence below which this network is "not sure" (``losses.NOT_SURE_FRACTION`` of
    its validation images fall below it), or ``losses.DEFAULT_FLOOR`` for a file without one."""
    return float((meta.get("confidence_floor") or {}).get("value", DEFAULT_FLOOR))


def _check_fields(path: Path, obj: dict, fields: dict, where: str = "") -> None:
    for key, (check, what) in fields.items():
        if key in obj and not check(obj[key]):
            what = what() if callable(what) else what
            raise CheckpointError(f"{path}: metadata {where}{key} must be {what}, got {short(obj[key])}")


def check_meta(path: Path, meta: dict) -> None:
    """Raise ``CheckpointError`` naming the first field of ``meta`` that gpumlp cannot use."""
    for key in ("sizes", "activation", "loss", "dtype"):
        if key not in meta:
            raise CheckpointError(f"{path}: metadata lacks {key!r}")
    meta["sizes"] = list(check_sizes(meta, "sizes", f"{path}: metadata"))
    _check_fields(path, meta, FIELDS)
    for i, epoch in enumerate(meta.get("history") or []):
        for key in EPOCH_REQUIRED:
            if key not in epoch:
                raise CheckpointError(f"{path}: metadata history[{i}] lacks {key!r}")
        _check_fields(path, epoch, EPOCH_FIELDS, f"history[{i}].")
    _check_fields(path, meta.get("train_state") or {}, TRAIN_STATE_FIELDS, "train_state.")
    _check_fields(path, meta.get("optimizer") or {}, OPTIMIZER_FIELDS, "optimizer.")
    _check_rule_state(path, meta.get("optimizer") or {})
    config = meta.get("config") or {}
    for key in ("sizes", "activation", "loss", "dtype", "dataset"):  # a resumed run takes these from config
        if key in meta and config.get(key) is not None and config[key] != meta[key]:
            raise CheckpointError(
                f"{path}: metadata config.{key} {short(config[key])} disagrees with the network's "
                f"{key} {short(meta[key])}; the file has been edited or damaged"
            )


def _check_rule_state(path: Path, opt: dict) -> None:
    """The hyper-parameters of a registered update rule's state: its own, each in its range. The
    rules are read now (gpumlp/optim.py's ``RULES``), so a rule registered in this process is known;
    an unknown rule's network still loads (resuming its run then names the missing rule)."""
    rule = RULES.get(opt.get("name"))
    for k, v in (opt.get("hyper") or {}).items() if rule is not None else ():
        if k not in rule.hyperparams:
            raise CheckpointError(
                f"{path}: metadata optimizer.hyper.{k} is no hyper-parameter of --optimizer {rule.name} "
                f"(it has {', '.join(rule.hyperparams) or 'none'}); the file has been edited or damaged"
            )
        try:
            rule.hyperparams[k].check(k, v)
        except ConfigError:
            raise CheckpointError(
                f"{path}: metadata optimizer.hyper.{k} must be {rule.hyperparams[k].need}, got {short(v)}"
            ) from None
