"""Checkpoints: a trained network and what it is, saved from host copies so they load anywhere.

Every file gpumlp reads or writes as a network is in one of the formats of ``FORMATS``: gpumlp's
own ``.npz`` and ``.json`` (``gpumlp.formats.native``; the format follows the file's suffix) and other
projects' JSON networks (``gpumlp.formats.interop``). A file is recognised by its suffix or its first
bytes, then by its content; its format's ``read`` gives ``(metadata, host parameters)``, every
value checked, and ``build`` is the one place a network is made from them. Writes are atomic: a
temporary file in the same folder, fsynced, then renamed over the target.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tokenize
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from gpumlp.errors import CheckpointError, ConfigError
from gpumlp.formats import interop, native
from gpumlp.formats.atomic import RunLock, check_target, fix_for_writes
from gpumlp.formats.base import Format, Source
from gpumlp.formats.native import FORMAT, VERSION
from gpumlp.formats.untrusted import check_dense, open_regular
from gpumlp.model import MLP

FORMATS: tuple[Format, ...] = (*native.OWN, *interop.FOREIGN)  # every format gpumlp reads; one claims each file
MAX_JSON_BYTES = 1 << 30  # any JSON network, parsed whole: refused above this before reading


def register(fmt: Format) -> Format:
    """Add ``fmt`` to ``FORMATS``, after which load, convert (``--to NAME`` for a foreign one), info and
    test read and write its files. Read at call time, so a format registered after import counts."""
    global FORMATS
    if any(f.name == fmt.name for f in FORMATS) or fmt.name == "gpumlp":
        raise CheckpointError(f"a format named {fmt.name!r} is already registered; give the new record another name")
    FORMATS = (*FORMATS, fmt)
    return fmt


def unregister(name: str) -> None:
    global FORMATS
    FORMATS = tuple(f for f in FORMATS if f.name != name)


@contextmanager
def registered(fmt: Format) -> Iterator[Format]:
    """``register(fmt)`` for the duration of a ``with`` block (tests)."""
    register(fmt)
    try:
        yield fmt
    finally:
        unregister(fmt.name)


def targets() -> str:
    """What ``convert --to`` takes, for its help: ``"gpumlp, rust (…) or nielsen (…)"``."""
    return _one_of(
        ["gpumlp", *(f"{fmt.name} ({fmt.label}, {_one_of(fmt.suffixes)})" for fmt in FORMATS if fmt.foreign)]
    )


def _own_format(path: Path) -> Format:
    """The gpumlp format a name asks for, by its suffix: ``.npz`` or ``.json``."""
    suffix = path.suffix.lower()
    for fmt in FORMATS:
        if not fmt.foreign and suffix in fmt.suffixes:
            return fmt
    suffixes = [s for fmt in FORMATS if not fmt.foreign for s in fmt.suffixes]
    raise CheckpointError(f"{path}: a checkpoint name must end in {_one_of(suffixes)}")


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before hours of training) when ``path`` cannot hold a checkpoint."""
    path = Path(path)
    _own_format(path)
    return check_target(path, *native.WHAT)


def build_metadata(model: MLP, **extra) -> dict:
    """What the checkpoint says about itself: architecture, versions, device, plus ``extra``."""
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "sizes": list(model.sizes),
        "activation": model.activation,
        "loss": model.loss,
        "init": model.init,
        "dtype": model.dtype,
        "input_divisor": model.input_divisor,  # the network's input is pixel / input_divisor
        "device": model.be.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"gpumlp": _version(), "numpy": np.__version__, "python": platform.python_version()},
    }
    if model.be.is_cuda:
        meta["versions"]["cupy"] = model.be.xp.__version__
        meta["tf32"] = model.be.tf32  # what the products ran in: gpumlp keeps float32 products float32
    meta.update(extra)
    return meta


def _version() -> str:
    from gpumlp import __version__

    return __version__


def _host(model: MLP) -> dict:
    """The parameters as host arrays ``{W0: (n_in, n_out), b0: (n_out,), …}``: device → host, once."""
    return {k: model.be.to_numpy(v) for k, v in model.params.items()}


def save(path: str | os.PathLike, model: MLP, state_arrays: dict | None = None, **metadata) -> Path:
    """Write ``model`` (from host copies of its parameters) and metadata to ``.npz`` or ``.json``;
    ``state_arrays``: a run's training state, ``{name: (n_params,) array}`` on the host or device."""
    path = Path(path)
    fmt = _own_format(path)
    reserved = sorted(set(metadata) & set(_DERIVED))
    if reserved:
        raise ConfigError(
            f"save() got metadata {', '.join(map(repr, reserved))}: these keys describe the network and come from "
            "the model itself (the file format follows the extension, .npz or .json); rename them"
        )
    _check_json("save()", metadata)
    meta = build_metadata(model, **metadata)
    host = _host(model)
    state = {k: np.asarray(model.be.to_numpy(v)) for k, v in (state_arrays or {}).items()}
    for k, v in {**host, **state}.items():
        if not np.all(np.isfinite(v)):
            raise CheckpointError(f"refusing to save {path}: {k} contains NaN or Inf (training diverged?)")
    fmt.write(path, meta, host, state)
    return path


def _check_json(who: str, metadata: dict) -> None:
    """Before anything is written: one line naming the first key that JSON cannot hold."""
    for key, value in metadata.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError, RecursionError) as e:
            raise CheckpointError(
                f"{who}: metadata {key!r} cannot be stored as JSON ({e}); pass numbers, strings, lists or dicts "
                "(int() or float() of a numpy number)"
            ) from None


def update_metadata(path: str | os.PathLike, **fields) -> dict:
    """Set ``fields`` in the metadata of the gpumlp checkpoint at ``path``, in place and atomically:
    its parameters, training state, other fields and format stay exactly as they were. Returns the
    metadata now in the file."""
    path = Path(path)
    reserved = sorted(set(fields) & set(_DERIVED))
    if reserved:
        names = ", ".join(map(repr, reserved))
        raise ConfigError(f"update_metadata(): {names} describe the network itself; they cannot be set")
    _check_json("update_metadata()", fields)
    RunLock(path).refuse_if_held("rewrite it")
    fmt, meta, host = _read(path, foreign=False)
    state = meta.pop("state_arrays", {})
    meta.update(fields)
    fmt.write(path, meta, host, state)
    return meta


# ---------------------------------------------------------------- reading


def _detect(source: Source) -> Format:
    """The one format of ``FORMATS`` that claims ``source``; a one-line error for none or several."""
    fitting = [fmt for fmt in FORMATS if fmt.fits(source)]
    if not fitting:
        syntaxes = _one_of(list(dict.fromkeys(fmt.syntax for fmt in FORMATS)))  # "npz or JSON", and any registered
        raise CheckpointError(
            f"{source.path} is not a network in any format gpumlp reads ({syntaxes}; by name or first bytes)"
        )
    found = [fmt for fmt in fitting if fmt.detect(source)]
    if len(found) == 1:
        return found[0]
    if not found:
        labels = _one_of([fmt.label for fmt in fitting])
        raise CheckpointError(f"{source.path} is {fitting[0].syntax}, but not {labels}: it has none of their keys")
    labels = " and ".join(fmt.label for fmt in found)
    raise CheckpointError(f"{source.path} has the keys of {labels} at once; keep one format's keys")


def _one_of(words: list[str]) -> str:
    """``["a", "b", "c"]`` → ``"a, b or c"``."""
    return f"{', '.join(words[:-1])} or {words[-1]}" if len(words) > 1 else words[0]


def _read(path: Path, foreign: bool = True) -> tuple[Format, dict, dict]:
    """``(format, metadata, host parameters)``, every field and array checked; ``foreign``: also
    other projects' networks. Nothing is allocated beyond what the file holds."""
    missing = f"checkpoint {path} not found; train one with `gpumlp train --save {path}`"
    f, size = open_regular(path, CheckpointError, missing)
    try:
        with f:
            check_dense(f, size, path, CheckpointError)
            known = {s for fmt in FORMATS for s in fmt.suffixes}
            source = Source(path, f, size, known, MAX_JSON_BYTES)
            fmt = _detect(source)
            if fmt.foreign and not foreign:  # a Rust or Nielsen network has no gpumlp metadata
                raise CheckpointError(
                    f"{path} is a {fmt.label} network, not a gpumlp checkpoint: it holds no training run to "
                    "resume; start a new run (gpumlp train without --resume)"
                )
            return (fmt, *fmt.read(source))
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a checkpoint") from None
    except (ValueError, SyntaxError, tokenize.TokenError) as e:  # bad JSON or UTF-8, bad npy header, short member
        raise CheckpointError(f"{path} is not a readable checkpoint ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as e:
        raise CheckpointError(f"{path} is damaged or truncated ({e})") from None


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a gpumlp checkpoint, every field checked, without building the network."""
    _, meta, _ = _read(Path(path), foreign=False)
    return meta


def build(meta: dict, host: dict, device="cpu") -> MLP:
    """The network ``meta`` describes (``sizes, activation, loss, init, dtype, input_divisor``) on
    ``device``, holding the host parameters ``host`` ``{W0: (n_in, n_out), b0: (n_out,), …}``, cast
    once to ``meta["dtype"]``. Every format's network is built here, and nowhere else."""
    # The parameters go host → device once; no starting weights are drawn only to be replaced.
    return MLP(
        meta["sizes"], meta["activation"], meta["loss"], meta.get("init"), device=device, dtype=meta["dtype"],
        input_divisor=meta.get("input_divisor", 255.0), params=host,
    )  # fmt: skip


def load(path: str | os.PathLike, device="cpu") -> tuple[MLP, dict]:
    """Read a network in any of ``FORMATS`` onto ``device``; returns ``(model, metadata)``.

    The metadata and every array are checked (the layers against the arrays the file holds) before
    the network is built or anything moves to the device; parameters are bit-identical to those
    saved (another project's, float64, exactly its file's numbers). The metadata of another
    project's network says gpumlp's format and version too: it is the network as gpumlp holds it."""
    _, meta, host = _read(Path(path))
    return build(meta, host, device), {"format": FORMAT, "version": VERSION, **meta}


def describe(path: str | os.PathLike) -> dict:
    """What ``gpumlp info`` shows: the metadata plus file size, parameter count and a history
    summary (best and last validation accuracy, first and last loss, total seconds). A foreign
    network shows its format's label and what its file holds (``format_label``, ``holds``): no
    gpumlp format, version, device or history."""
    path = Path(path)
    fmt, meta, host = _read(path)
    model = build(meta, host)
    history = meta.get("history") or []
    vals = [(e["val_accuracy"], e["epoch"]) for e in history if e.get("val_accuracy") is not None]  # checked
    summary = {
        "epochs": len(history),
        "first_train_loss": history[0].get("train_loss") if history else None,
        "last_train_loss": history[-1].get("train_loss") if history else None,
        "best_val_accuracy": max(vals)[0] if vals else None,
        "best_val_epoch": max(vals)[1] if vals else None,
        "last_val_accuracy": vals[-1][0] if vals else None,
        "seconds": sum(e.get("seconds") or 0 for e in history),
    }
    state = {k: list(v.shape) for k, v in meta.pop("state_arrays", {}).items()}  # shapes: JSON-ready
    if fmt.foreign:
        meta.update(format_label=fmt.label, holds=fmt.holds)
    return dict(meta, path=str(path), file_format=fmt.syntax.lower(), bytes=path.stat().st_size,
                n_params=model.n_params, history_summary=summary, state_arrays=state)  # fmt: skip


# Metadata that ``save`` derives from the model itself; everything else carries over in a conversion.
_DERIVED = (
    "format",
    "version",
    "sizes",
    "activation",
    "loss",
    "init",
    "dtype",
    "input_divisor",
    "params",
    "state_arrays",
)


def convert(source: str | os.PathLike, target: str | os.PathLike, to: str = "gpumlp") -> MLP:
    """Rewrite ``source`` (a network in any of ``FORMATS``) as ``target``: a gpumlp ``.npz``/``.json``
    with the same parameters and metadata, or (``to`` a registered foreign format's name: rust, nielsen, …) in it."""
    exports = {fmt.name: fmt for fmt in FORMATS if fmt.foreign}
    if to != "gpumlp" and to not in exports:
        raise CheckpointError(f"unknown --to {to!r}: choose {_one_of(['gpumlp', *exports])}")
    _check_conversion_target(Path(source), Path(target), to)
    _, meta, host = _read(Path(source))
    model = build(meta, host)
    with fix_for_writes(CONVERT_FIX):  # a late write error names convert's TARGET, not train's --save
        if to == "gpumlp":
            extra = {k: v for k, v in meta.items() if k not in _DERIVED}
            save(target, model, meta.get("state_arrays"), **extra)
            return model
        fmt, target = exports[to], Path(target)
        if target.suffix.lower() not in fmt.suffixes:
            raise CheckpointError(f"{target}: the {to} format is {fmt.syntax}; name the file {_one_of(fmt.suffixes)}")
        fmt.write(target, meta, host, {})
    return model


CONVERT_FIX = "choose another TARGET"  # `gpumlp convert SOURCE TARGET`


def _check_conversion_target(source: Path, target: Path, to: str) -> None:
    """Refuse, before anything is read, a ``convert`` target that is the source itself, one a
    gpumlp run is saving to, or an existing file that is not a checkpoint: convert replaces only
    checkpoints, and only those the user names."""
    fix = CONVERT_FIX
    if to == "gpumlp":
        _own_format(target)
    try:
        same = os.path.samefile(source, target)
    except OSError:
        same = False
    if same:
        raise CheckpointError(f"{target} is the checkpoint being converted; {fix}")
    check_target(target, "a checkpoint", fix)
    RunLock(target).refuse_if_held("convert to it")
    if target.is_file():
        try:
            _read(target)
        except CheckpointError:
            raise CheckpointError(
                f"{target} exists and is not a checkpoint gpumlp reads: convert replaces only checkpoints; {fix}"
            ) from None
