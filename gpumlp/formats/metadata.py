"""What each field of a gpumlp checkpoint's metadata may hold, checked before anything is built.

A checkpoint is a file anyone can edit: every field that gpumlp reads (to build the network, to
resume its run, or for ``gpumlp info``) is checked here for its type and range, so a wrong value
is one line naming the field, never a traceback later nor a silently different network
(``sizes: [784, 10.9]`` is refused, not truncated to 10; ``version: true`` is not version 1).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gpumlp.activations import ACTIVATIONS
from gpumlp.data.datasets import DATASETS
from gpumlp.errors import CheckpointError, ConfigError
from gpumlp.formats.base import check_sizes, short
from gpumlp.model import DTYPES, INITS, LOSSES
from gpumlp.optim import RULES


def _number(v) -> bool:
    """A finite JSON number (not a bool, not an integer too large for a float)."""
    if type(v) is int:
        return abs(v) < 2**63
    return type(v) is float and math.isfinite(v)


def _count(v) -> bool:
    return type(v) is int and 0 <= v < 2**63


def _or_none(check):
    return lambda v: v is None or check(v)


def _object_of(check):
    return lambda v: isinstance(v, dict) and all(check(x) for x in v.values())


def _rng_state(v) -> bool:
    """A permutation generator's ``bit_generator.state`` that numpy accepts (checked on a scratch one)."""
    try:
        np.random.PCG64().state = v
    except (TypeError, ValueError, KeyError, OverflowError):
        return False
    return True


# Field → (check, what it must be). A field that is absent is not checked; ``None`` is "unknown".
EPOCH_FIELDS = {
    "epoch": (_count, "an epoch number"),
    "batch_size": (_count, "an integer"),
    "train_loss": (_number, "a number"),
    "val_accuracy": (_or_none(_number), "a number"),
    "val_loss": (_or_none(_number), "a number"),
    "seconds": (_or_none(_number), "a number"),
    "lr": (_or_none(_number), "a number"),
    "images_per_s": (_or_none(_number), "a number"),
}
TRAIN_STATE_FIELDS = {
    "epochs_done": (_count, "a count of epochs"),
    "rng_state": (_or_none(_rng_state), "the batch-order generator's state (a PCG64 state object)"),
    "best_epoch": (_or_none(_count), "an epoch number or null"),
    "best_score": (_or_none(_number), "a number or null"),
    "stopped_epoch": (_or_none(_count), "an epoch number or null"),
    "weights_epoch": (_or_none(_count), "an epoch number or null"),
    "blas_threads": (_or_none(lambda v: _count(v) and v >= 1), "a thread count (1 or more) or null"),
}
OPTIMIZER_FIELDS = {
    "name": (lambda v: isinstance(v, str), "an optimiser name"),
    "t": (_count, "a step count"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a number, 0 or more"),
    "hyper": (_object_of(_number), "an object of numbers"),
}
FIELDS = {
    "activation": (lambda v: v in tuple(ACTIVATIONS), f"one of {', '.join(ACTIVATIONS)}"),
    "loss": (lambda v: v in tuple(LOSSES), f"one of {', '.join(LOSSES)}"),
    "dtype": (lambda v: v in tuple(DTYPES), f"one of {', '.join(DTYPES)}"),
    "init": (_or_none(lambda v: v in INITS), f"one of {', '.join(INITS)} or null"),
    "input_divisor": (lambda v: _number(v) and v > 0, "a positive number, e.g. 255 (the network sees pixel / it)"),
    "device": (_or_none(lambda v: isinstance(v, str)), "a string"),
    "created": (_or_none(lambda v: isinstance(v, str)), "a string"),
    "blas": (_or_none(lambda v: isinstance(v, str)), "a string"),
    "cupy_tf32": (_or_none(lambda v: isinstance(v, str)), "a string or null"),  # files written before "tf32"
    "tf32": (_or_none(lambda v: isinstance(v, bool)), "true or false"),
    "versions": (_or_none(_object_of(lambda x: x is None or isinstance(x, str))), "an object of version strings"),
    "mnist_sha256": (_or_none(_object_of(lambda x: isinstance(x, str))), "an object of SHA-256 strings"),
    "dataset": (lambda v: isinstance(v, str) and v in DATASETS, f"one of {', '.join(DATASETS)}"),
    "data_checksums": (_or_none(lambda v: isinstance(v, dict)), "an object"),
    "test_accuracy": (_or_none(lambda v: _number(v) and 0 <= v <= 1), "a fraction in [0, 1] or null"),
    "test_size": (_or_none(_count), "a count of images"),
    "config": (_or_none(lambda v: isinstance(v, dict)), "an object of training options"),
    "history": (_or_none(lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v)), "a list of epochs"),
    "train_state": (_or_none(lambda v: isinstance(v, dict)), "an object"),
    "optimizer": (_or_none(lambda v: isinstance(v, dict)), "an object"),
}


def _check_fields(path: Path, obj: dict, fields: dict, where: str = "") -> None:
    for key, (check, what) in fields.items():
        if key in obj and not check(obj[key]):
            raise CheckpointError(f"{path}: metadata {where}{key} must be {what}, got {short(obj[key])}")


def check_meta(path: Path, meta: dict) -> None:
    """Raise ``CheckpointError`` naming the first field of ``meta`` that gpumlp cannot use."""
    for key in ("sizes", "activation", "loss", "dtype"):
        if key not in meta:
            raise CheckpointError(f"{path}: metadata lacks {key!r}")
    meta["sizes"] = list(check_sizes(meta, "sizes", f"{path}: metadata"))
    _check_fields(path, meta, FIELDS)
    for i, epoch in enumerate(meta.get("history") or []):
        for key in ("epoch", "train_loss"):  # what every epoch has had since the first gpumlp
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


def info_rows(d: dict) -> list[tuple[str, str]]:
    """The table ``gpumlp info`` prints for ``checkpoint.describe``'s dict: (label, text) rows."""
    cfg, h = d.get("config") or {}, d["history_summary"]
    foreign = d.get("format_label")  # another project's file, read as it is (not one converted from it)
    kind = foreign or f"{d['file_format']}, format version {d['version']}"
    rows = [
        ("checkpoint", f"{d['path']} ({kind}, {d['bytes']:,} bytes)"),
        (
            "architecture",
            f"{'-'.join(map(str, d['sizes']))}, sigmoid on every layer (gpumlp: sigmoid hidden, mse output), float64"
            if foreign
            else f"{'-'.join(map(str, d['sizes']))}, {d['activation']} hidden, {d['loss']} output, {d['dtype']}",
        ),
        ("parameters", f"{d['n_params']:,}"),
        ("input", f"pixel / {d.get('input_divisor', 255.0):g}"),
    ]
    if not foreign:
        rows.append(("dataset", d.get("dataset") or "mnist"))
    if foreign:
        rows.append(("file holds", f"{d['holds']} (no training history, date or versions)"))
        if d.get("cost"):
            rows.append(("cost", f"{d['cost']} (used only in training; outputs are sigmoids either way)"))
    if cfg:
        data = f"{cfg.get('train_size')} train / {cfg.get('val_size')} val images"
        rows.append(("training", f"batch {cfg.get('batch_size')}, lr {cfg.get('lr')}, init {d.get('init')}, "
                                 f"seed {cfg.get('seed')}, {data}"))  # fmt: skip
    if h["epochs"]:
        loss = f"loss {h['first_train_loss']:.4f} → {h['last_train_loss']:.4f}"
        val = ""
        if h["best_val_accuracy"] is not None:
            val = (f", val acc best {100 * h['best_val_accuracy']:.2f}% (epoch {h['best_val_epoch']}), "
                   f"last {100 * h['last_val_accuracy']:.2f}%")  # fmt: skip
        rows.append(("history", f"{h['epochs']} epochs in {h['seconds']:.1f} s, {loss}{val}"))
    if d.get("test_accuracy") is not None:
        rows.append(("test accuracy", f"{100 * d['test_accuracy']:.2f}% ({d.get('test_size')} images)"))
    versions = ", ".join(f"{k} {v}" for k, v in (d.get("versions") or {}).items())
    trained = [str(x) for x in (d.get("device"), d.get("created"), versions) if x]
    if trained:
        rows.append(("trained on", ", ".join(trained)))
    return rows
