"""Checkpoints: a trained network and what it is, saved from host copies so they load anywhere.

``.npz``: the parameter arrays ``W0, b0, W1, b1, …`` as trained, plus ``metadata``, UTF-8 JSON in
a uint8 array, so ``numpy.load(path, allow_pickle=False)`` reads everything with numpy alone.
``.json``: the same metadata with ``params`` as nested lists of exact decimal floats. A run's
training state (optimiser buffers, the best epoch's weights), flat vectors shaped like all the
parameters together, goes beside them: npz arrays ``state.NAME``, JSON ``state_arrays``. The format
follows the file extension. Writes are atomic: a temporary file in the same folder, fsynced,
then renamed over the target.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tokenize
import zipfile
from pathlib import Path

import numpy as np

from gpumlp import interop
from gpumlp.atomic import atomic_write, check_target
from gpumlp.checkpoint_meta import check_meta as _check_meta_fields
from gpumlp.errors import CheckpointError, ConfigError
from gpumlp.model import DTYPES, MLP, param_shapes
from gpumlp.untrusted import check_dense, check_json_text, check_zip_directory, open_regular, read_limited

FORMAT = "gpumlp-checkpoint"
VERSION = 1
SUFFIXES = (".npz", ".json")
_WHAT = ("a checkpoint", "choose another --save path")  # how write errors name the file and the fix


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(f"{path}: a checkpoint name must end in .npz or .json")
    return suffix


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before hours of training) when ``path`` cannot hold a checkpoint."""
    path = Path(path)
    _suffix(path)
    return check_target(path, *_WHAT)


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


def save(path: str | os.PathLike, model: MLP, state_arrays: dict | None = None, **metadata) -> Path:
    """Write ``model`` (from host copies of its parameters) and metadata to ``.npz`` or ``.json``;
    ``state_arrays``: a run's training state, ``{name: (n_params,) array}`` on the host or device."""
    path = Path(path)
    suffix = _suffix(path)
    reserved = sorted(set(metadata) & set(_DERIVED))
    if reserved:
        raise ConfigError(
            f"save() got metadata {', '.join(map(repr, reserved))}: these keys describe the network and come from "
            "the model itself (the file format follows the extension, .npz or .json); rename them"
        )
    meta = build_metadata(model, **metadata)
    host = {k: model.be.to_numpy(v) for k, v in model.params.items()}  # device → host, once
    state = {k: np.asarray(model.be.to_numpy(v)) for k, v in (state_arrays or {}).items()}
    for k, v in {**host, **state}.items():
        if not np.all(np.isfinite(v)):
            raise CheckpointError(f"refusing to save {path}: {k} contains NaN or Inf (training diverged?)")
    if suffix == ".npz":
        blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        arrays = {**host, **{f"state.{k}": v for k, v in state.items()}}
        atomic_write(path, lambda f: np.savez(f, metadata=blob, **arrays), *_WHAT)
    else:
        # float32 → Python float is exact, and repr round-trips a float64, so loading is bit-exact.
        doc = dict(meta, params={k: v.tolist() for k, v in host.items()})
        if state:
            doc["state_arrays"] = {k: v.tolist() for k, v in state.items()}
        atomic_write(path, lambda f: f.write(json.dumps(doc).encode("utf-8")), *_WHAT)
    return path


# Bounds far above any network gpumlp trains (784-4096-4096-10 in float64 is 0.2 GB, five times
# that with Adam's buffers and the best epoch's weights): a file declaring more is refused before
# anything is allocated or parsed.
MAX_ARRAY_BYTES = 1 << 31
MAX_JSON_BYTES = 1 << 30
MAX_JSON_CONTAINERS = 1 << 20  # lists and objects: one per weight row; 2^20 rows of 784 would be 1.6 GB of JSON
MAX_METADATA_BYTES = 1 << 26
NPZ_LIMITS = {
    "members": 4096,
    "bytes": 1 << 33,  # all members unpacked; stored members cannot exceed the file itself
    "ratio": 4,  # deflated float weights shrink by at most ~1.2×; zeros by 1000×
    "slack": 1 << 24,
}
PICKLE_FREE = "refused without unpickling"


def _format_of(path: Path, f) -> str:
    """ ".npz" or ".json": by the name when it says, else by the first bytes (Nielsen's ``save``
    takes any name), so a network saved as ``net`` or ``net.txt`` still loads."""
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        return suffix
    head = f.read(64)
    f.seek(0)
    if head.startswith(b"PK"):
        return ".npz"
    if head.lstrip()[:1] == b"{":
        return ".json"
    raise CheckpointError(f"{path} is neither an npz nor a JSON network (by its name or its first bytes)")


def _parse_json(data: bytes, path: Path, limit: int):
    check_json_text(data, limit, MAX_JSON_CONTAINERS, path, CheckpointError, f"any gpumlp checkpoint ({limit:,} bytes)")
    return json.loads(data)  # bytes: UTF-8 (or 16/32) detected by json itself


def _npy_header(f, path: Path, key: str):
    """``(shape, fortran_order, dtype)`` of the npy stream ``f``; pickles refused here."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject:
        raise CheckpointError(f"{path}: {key} holds pickled Python objects; {PICKLE_FREE}")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise CheckpointError(f"{path}: {key} declares {nbytes:,} bytes, more than any gpumlp network")
    return shape, fortran, dtype


def _member(zf: zipfile.ZipFile, info, path: Path, key: str, dtype, shape) -> np.ndarray:
    """One npz member, its header checked against the ``dtype`` and ``shape`` expected before its
    data is read (so what is allocated is what the metadata, itself checked, allows)."""
    with zf.open(info) as f:
        got_shape, _, got_dtype = _npy_header(f, path, key)
    if got_dtype != dtype:
        raise CheckpointError(
            f"{path}: {key.replace('state.', 'state ', 1)} is {got_dtype}, the metadata says {np.dtype(dtype).name}"
        )
    if got_shape != shape:
        need = "the layers need" if not key.startswith("state.") else "the network needs"
        raise CheckpointError(f"{path}: {key.replace('state.', 'state ', 1)} has shape {got_shape}, {need} {shape}")
    with zf.open(info) as f:
        arr = np.lib.format.read_array(f, allow_pickle=False)
    if not np.all(np.isfinite(arr)):
        raise CheckpointError(f"{path}: {key.replace('state.', 'state ', 1)} contains NaN or Inf")
    return arr


def _read_npz(path: Path, f, size: int) -> tuple[dict, dict]:
    """Metadata first, checked; then each array, its header checked against the metadata's layers.
    The zip directory (member count, compression, total unpacked size) is checked before any of it."""
    with zipfile.ZipFile(f) as zf:
        infos = zf.infolist()
        check_zip_directory(infos, size, NPZ_LIMITS, path, CheckpointError)
        members = {info.filename.removesuffix(".npy"): info for info in infos}
        if "metadata" not in members:
            raise CheckpointError(f"{path} has no metadata array; is it a gpumlp checkpoint?")
        with zf.open(members["metadata"]) as m:
            shape, _, dtype = _npy_header(m, path, "metadata")
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_METADATA_BYTES:
            raise CheckpointError(f"{path}: its metadata is not JSON text (a uint8 array, got {dtype} {shape})")
        with zf.open(members.pop("metadata")) as m:
            blob = np.lib.format.read_array(m, allow_pickle=False).tobytes()
        meta = _parse_json(blob, path, MAX_METADATA_BYTES)
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: its metadata is not a JSON object")
        _check_meta(path, meta)
        shapes, dtype = param_shapes(meta["sizes"]), DTYPES[meta["dtype"]]
        params = sorted(k for k in members if not k.startswith("state."))
        _check_keys(path, params, meta["sizes"], shapes)
        host = {k: _member(zf, members[k], path, k, dtype, shape) for k, shape in shapes.items()}
        n = sum(int(np.prod(s)) for s in shapes.values())
        meta["state_arrays"] = {
            k.removeprefix("state."): _member(zf, info, path, k, dtype, (n,))
            for k, info in members.items()
            if k.startswith("state.")
        }
    return meta, host


def _check_keys(path: Path, keys, sizes, shapes) -> None:
    if set(keys) != set(shapes):
        raise CheckpointError(
            f"{path}: parameters {sorted(keys)[:8]} do not match the layers {list(sizes)} (expected {list(shapes)})"
        )


def _json_array(value, path: Path, key: str, dtype, shape) -> np.ndarray:
    """A JSON parameter or state vector → a finite ``dtype`` array of ``shape``; numbers only (a
    400-digit integer, a string or null is refused, not turned into inf or an object)."""
    what = key.replace("state.", "state ", 1)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):  # ragged lists
        raise CheckpointError(f"{path}: {what} is not an array of numbers") from None
    if arr.dtype.kind not in "iuf":
        raise CheckpointError(f"{path}: {what} is not an array of numbers (or holds an integer too large for a float)")
    if arr.shape != shape:
        need = "the network needs" if key.startswith("state.") else "the layers need"
        raise CheckpointError(f"{path}: {what} has shape {arr.shape}, {need} {shape}")
    with np.errstate(over="ignore"):
        arr = arr.astype(dtype)  # exact for what save wrote: float32 → Python float → float32
    if not np.all(np.isfinite(arr)):
        raise CheckpointError(f"{path}: {what} contains NaN or Inf (or a number too large for {np.dtype(dtype).name})")
    return arr


def _read_json(path: Path, doc) -> tuple[dict, dict | None]:
    if interop.detect(doc) is not None:
        return doc, None  # a Rust-project or Nielsen network2 network: load() converts it
    if not isinstance(doc, dict) or not isinstance(doc.get("params"), dict):
        raise CheckpointError(f"{path} has no 'params' object; is it a gpumlp checkpoint?")
    raw = doc.pop("params")
    _check_meta(path, doc)
    shapes, dtype = param_shapes(doc["sizes"]), DTYPES[doc["dtype"]]
    _check_keys(path, raw, doc["sizes"], shapes)
    host = {k: _json_array(raw[k], path, k, dtype, shape) for k, shape in shapes.items()}
    n = sum(int(np.prod(s)) for s in shapes.values())
    state = doc.get("state_arrays")
    if state is not None and not isinstance(state, dict):
        raise CheckpointError(f"{path}: state_arrays is not an object of arrays")
    doc["state_arrays"] = {k: _json_array(v, path, f"state.{k}", dtype, (n,)) for k, v in (state or {}).items()}
    return doc, host


def _read(path: Path) -> tuple[dict, dict | None, str]:
    """``(metadata, host parameters, ".npz" or ".json")``, every field and array checked; host
    parameters None for a foreign network. Nothing is allocated beyond what the file holds."""
    missing = f"checkpoint {path} not found; train one with `gpumlp train --save {path}`"
    f, size = open_regular(path, CheckpointError, missing)
    try:
        with f:
            check_dense(f, size, path, CheckpointError)
            fmt = _format_of(path, f)
            if fmt == ".npz":
                return (*_read_npz(path, f, size), fmt)
            what = f"any gpumlp network ({MAX_JSON_BYTES:,} bytes)"
            text = read_limited(f, size, MAX_JSON_BYTES, path, CheckpointError, what, text=True)
            doc = _parse_json(text, path, MAX_JSON_BYTES)
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a checkpoint") from None
    except (ValueError, SyntaxError, tokenize.TokenError) as e:  # bad JSON or UTF-8, bad npy header, short member
        raise CheckpointError(f"{path} is not a readable checkpoint ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as e:
        raise CheckpointError(f"{path} is damaged or truncated ({e})") from None
    return (*_read_json(path, doc), fmt)


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a gpumlp checkpoint, every field checked, without building the network."""
    path = Path(path)
    meta, _, _ = _read(path)
    _check_header(path, meta)  # a foreign network has no gpumlp metadata
    return meta


def _check_meta(path: Path, meta: dict) -> None:
    """Every field a gpumlp checkpoint's metadata may hold, checked before anything is built."""
    _check_header(path, meta)
    _check_meta_fields(path, meta)


def _check_header(path: Path, meta) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gpumlp checkpoint (no format {FORMAT!r})")
    version = meta.get("version")
    if type(version) is not int or version != VERSION:  # true == 1 in Python: not a version
        raise CheckpointError(f"{path} has checkpoint version {version!r}; this gpumlp reads version {VERSION}")


def load(path: str | os.PathLike, device="cpu") -> tuple[MLP, dict]:
    """Read a ``.npz`` or ``.json`` checkpoint onto ``device``; returns ``(model, metadata)``.

    The metadata and every array are checked (the layers against the arrays the file holds) before
    the network is built or anything moves to the device; parameters are bit-identical to those saved.
    """
    path = Path(path)
    meta, host, _ = _read(path)
    if host is None:  # a foreign network, checked as strictly as our own; float64 keeps it exact
        try:
            return interop.from_foreign(meta, device=device, dtype="float64")
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
    # The saved parameters go host → device once; no starting weights are drawn only to be replaced.
    model = MLP(
        meta["sizes"], meta["activation"], meta["loss"], meta.get("init"), device=device, dtype=meta["dtype"],
        input_divisor=meta.get("input_divisor", 255.0), params=host,
    )  # fmt: skip
    return model, meta


def describe(path: str | os.PathLike) -> dict:
    """What ``gpumlp info`` shows: the metadata plus file size, parameter count and a history
    summary (best and last validation accuracy, first and last loss, total seconds). A foreign
    network shows what its file holds: no gpumlp format, version, device or history."""
    path = Path(path)
    model, meta = load(path)
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
    fmt = "npz" if path.suffix.lower() == ".npz" or zipfile.is_zipfile(path) else "json"
    if meta.get("imported_from"):  # not a gpumlp checkpoint: no format or version of ours to show
        meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
        meta["holds"] = interop.HOLDS[meta["imported_from"]]
    return dict(meta, path=str(path), file_format=fmt, bytes=path.stat().st_size,
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
    """Rewrite ``source`` (a gpumlp checkpoint, or a Rust-project or Nielsen JSON) as ``target``:
    a gpumlp ``.npz``/``.json`` with the same parameters and metadata, or ``to="rust"|"nielsen"``."""
    if to not in ("gpumlp", *interop.EXPORTERS):
        raise CheckpointError(f"unknown --to {to!r}: choose gpumlp, rust or nielsen")
    model, meta = load(source)
    if to == "gpumlp":
        save(target, model, meta.get("state_arrays"), **{k: v for k, v in meta.items() if k not in _DERIVED})
    else:
        if Path(target).suffix.lower() != ".json":
            raise CheckpointError(f"{target}: the {to} format is JSON; name the file .json")
        interop.save_foreign(target, model, to)
    return model
