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
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from gpumlp import interop
from gpumlp.errors import CheckpointError
from gpumlp.model import DTYPES, MLP, flatten, param_shapes

FORMAT = "gpumlp-checkpoint"
VERSION = 1
SUFFIXES = (".npz", ".json")


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(f"{path}: a checkpoint name must end in .npz or .json")
    return suffix


def _atomic_write(path: Path, write, what: str = "a checkpoint", fix: str = "choose another --save path") -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place.
    ``what`` and ``fix`` word the error when the folder cannot take a file (other writers: export)."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise CheckpointError(f"cannot write {what} in {folder}: {e.strerror or e}; {fix}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file a normal new file's mode
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before hours of training) when ``path`` cannot hold a checkpoint."""
    path = Path(path)
    _suffix(path)
    folder = path.parent if str(path.parent) else Path(".")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if path.is_dir() or not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise CheckpointError(
            f"cannot write a checkpoint to {path}: {probe} is not a writable folder; choose another --save path"
        )
    return path


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
    meta = build_metadata(model, **metadata)
    host = {k: model.be.to_numpy(v) for k, v in model.params.items()}  # device → host, once
    state = {k: np.asarray(model.be.to_numpy(v)) for k, v in (state_arrays or {}).items()}
    for k, v in {**host, **state}.items():
        if not np.all(np.isfinite(v)):
            raise CheckpointError(f"refusing to save {path}: {k} contains NaN or Inf (training diverged?)")
    if suffix == ".npz":
        blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        arrays = {**host, **{f"state.{k}": v for k, v in state.items()}}
        _atomic_write(path, lambda f: np.savez(f, metadata=blob, **arrays))
    else:
        # float32 → Python float is exact, and repr round-trips a float64, so loading is bit-exact.
        doc = dict(meta, params={k: v.tolist() for k, v in host.items()})
        if state:
            doc["state_arrays"] = {k: v.tolist() for k, v in state.items()}
        _atomic_write(path, lambda f: f.write(json.dumps(doc).encode("utf-8")))
    return path


# Far above any network gpumlp trains (784-4096-4096-10 in float64 is 0.2 GB): a file declaring
# more is refused before anything is allocated or parsed.
MAX_ARRAY_BYTES = 1 << 31
MAX_JSON_BYTES = 1 << 30


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz, each header checked first: object arrays (pickles) and absurd sizes
    are refused before a byte of their data is read."""
    arrays = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else None
                shape, _, dtype = (read_header or np.lib.format.read_array_header_2_0)(f)
            if dtype.hasobject:
                raise CheckpointError(f"{path}: {key} holds pickled Python objects; refused without unpickling")
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if nbytes > MAX_ARRAY_BYTES:
                raise CheckpointError(f"{path}: {key} declares {nbytes:,} bytes, more than any gpumlp network")
            with zf.open(info) as f:
                arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
    return arrays


def _read(path: Path) -> tuple[dict, dict]:
    suffix = _suffix(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train one with `gpumlp train --save {path}`")
    try:
        if suffix == ".npz":
            arrays = _read_npz(path)
            if "metadata" not in arrays:
                raise CheckpointError(f"{path} has no metadata array; is it a gpumlp checkpoint?")
            meta = json.loads(arrays.pop("metadata").tobytes().decode("utf-8"))
            if not isinstance(meta, dict):
                raise CheckpointError(f"{path}: its metadata is not a JSON object")
            state = [k for k in arrays if k.startswith("state.")]
            meta["state_arrays"] = {k.removeprefix("state."): arrays.pop(k) for k in state}
            return meta, arrays
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is {path.stat().st_size:,} bytes, more than any gpumlp network")
        meta = json.loads(path.read_text(encoding="utf-8"))
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a checkpoint") from None
    except ValueError as e:  # bad JSON or UTF-8, bad npy header
        raise CheckpointError(f"{path} is not a readable checkpoint ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path} is damaged or truncated ({e})") from None
    if interop.detect(meta) is not None:
        return meta, None  # a Rust-project or Nielsen network2 network: load() converts it
    if not isinstance(meta, dict) or not isinstance(meta.get("params"), dict):
        raise CheckpointError(f"{path} has no 'params' object; is it a gpumlp checkpoint?")
    return meta, meta.pop("params")


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a gpumlp checkpoint, without building the network."""
    path = Path(path)
    meta, _ = _read(path)
    _check_header(path, meta)
    return meta


def _check_header(path: Path, meta) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gpumlp checkpoint (no format {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {meta.get('version')!r}; this gpumlp reads version {VERSION}"
        )


def load(path: str | os.PathLike, device="cpu") -> tuple[MLP, dict]:
    """Read a ``.npz`` or ``.json`` checkpoint onto ``device``; returns ``(model, metadata)``.

    Every array is checked against the sizes the metadata declares before anything moves to the
    device, and parameters are bit-identical to those saved.
    """
    path = Path(path)
    meta, raw = _read(path)
    if raw is None:  # a foreign network, checked as strictly as our own; float64 keeps it exact
        try:
            return interop.from_foreign(meta, device=device, dtype="float64")
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
    _check_header(path, meta)
    try:
        model = MLP(
            meta["sizes"], meta["activation"], meta["loss"], meta.get("init"), device=device, dtype=meta["dtype"],
            input_divisor=meta.get("input_divisor", 255.0),
        )  # fmt: skip
    except KeyError as e:
        raise CheckpointError(f"{path}: metadata lacks {e}") from None
    dtype = DTYPES[model.dtype]
    shapes = param_shapes(model.sizes)
    if set(raw) != set(shapes):
        raise CheckpointError(
            f"{path}: parameters {sorted(raw)} do not match the layers {model.sizes} (expected {list(shapes)})"
        )
    host = {}
    for key, shape in shapes.items():
        if isinstance(raw[key], np.ndarray) and raw[key].dtype != dtype:
            raise CheckpointError(f"{path}: {key} is {raw[key].dtype}, the metadata says {model.dtype}")
        try:
            arr = np.asarray(raw[key], dtype=dtype)
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: {key} is not an array of numbers") from None
        if arr.shape != shape:
            raise CheckpointError(f"{path}: {key} has shape {arr.shape}, the layers need {shape}")
        if not np.all(np.isfinite(arr)):
            raise CheckpointError(f"{path}: {key} contains NaN or Inf")
        host[key] = arr
    model.theta[...] = model.be.asarray(flatten(host), dtype=dtype)  # host → device, once
    meta["state_arrays"] = _check_state(path, meta.get("state_arrays"), model)
    return model, meta


def _check_state(path: Path, raw, model: MLP) -> dict[str, np.ndarray]:
    """A checkpoint's training-state vectors, each checked like a parameter: (n_params,), finite."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: state_arrays is not an object of arrays")
    dtype, state = DTYPES[model.dtype], {}
    for key, value in raw.items():
        if isinstance(value, np.ndarray) and value.dtype != dtype:
            raise CheckpointError(f"{path}: state {key} is {value.dtype}, the metadata says {model.dtype}")
        try:
            arr = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: state {key} is not an array of numbers") from None
        if arr.shape != (model.n_params,):
            raise CheckpointError(f"{path}: state {key} has shape {arr.shape}, the network needs ({model.n_params},)")
        if not np.all(np.isfinite(arr)):
            raise CheckpointError(f"{path}: state {key} contains NaN or Inf")
        state[key] = arr
    return state


def describe(path: str | os.PathLike) -> dict:
    """What ``gpumlp info`` shows: the metadata plus file size, parameter count and a history
    summary (best and last validation accuracy, first and last loss, total seconds)."""
    path = Path(path)
    model, meta = load(path)
    history = [e for e in meta.get("history", []) if isinstance(e, dict)]
    vals = [(e["val_accuracy"], e["epoch"]) for e in history if e.get("val_accuracy") is not None]
    summary = {
        "epochs": len(history),
        "first_train_loss": history[0].get("train_loss") if history else None,
        "last_train_loss": history[-1].get("train_loss") if history else None,
        "best_val_accuracy": max(vals)[0] if vals else None,
        "best_val_epoch": max(vals)[1] if vals else None,
        "last_val_accuracy": vals[-1][0] if vals else None,
        "seconds": sum(e.get("seconds", 0) for e in history),
    }
    state = {k: list(v.shape) for k, v in meta.pop("state_arrays", {}).items()}  # shapes: JSON-ready
    return dict(meta, path=str(path), file_format=path.suffix.lower()[1:], bytes=path.stat().st_size,
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
