"""gpumlp's own checkpoint formats, ``.npz`` and ``.json``: their records, readers and writers.

``.npz``: the parameter arrays ``W0, b0, W1, b1, …`` as trained, plus ``metadata``, UTF-8 JSON in
a uint8 array, so ``numpy.load(path, allow_pickle=False)`` reads everything with numpy alone.
``.json``: the same metadata with ``params`` as nested lists of exact decimal floats. A run's
training state (optimiser buffers, the best epoch's weights), flat vectors shaped like all the
parameters together, goes beside them: npz arrays ``state.NAME``, JSON ``state_arrays``.
Reading checks the metadata first, then each array against the layers it declares, so nothing
is allocated beyond what the file holds; writing is atomic (``gpumlp.formats.atomic``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from gpumlp.errors import CheckpointError
from gpumlp.formats.atomic import atomic_write
from gpumlp.formats.base import Format, Source, parse_json
from gpumlp.formats.metadata import check_meta as _check_meta_fields
from gpumlp.formats.untrusted import check_zip_directory
from gpumlp.model import DTYPES, param_shapes

FORMAT = "gpumlp-checkpoint"
VERSION = 1
WHAT = ("a checkpoint", "choose another --save path")  # how write errors name the file and the fix

# Bounds far above any network gpumlp trains (784-4096-4096-10 in float64 is 0.2 GB, five times
# that with Adam's buffers and the best epoch's weights): a file declaring more is refused before
# anything is allocated or parsed.
MAX_ARRAY_BYTES = 1 << 31
MAX_METADATA_BYTES = 1 << 26
NPZ_LIMITS = {
    "members": 4096,
    "bytes": 1 << 33,  # all members unpacked; stored members cannot exceed the file itself
    "ratio": 4,  # deflated float weights shrink by at most ~1.2×; zeros by 1000×
    "slack": 1 << 24,
}
PICKLE_FREE = "refused without unpickling"


def check_header(path: Path, meta) -> None:
    """Refuse metadata that does not say it is a gpumlp checkpoint of the version this gpumlp reads."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gpumlp checkpoint (no format {FORMAT!r})")
    version = meta.get("version")
    if type(version) is not int or version != VERSION:  # true == 1 in Python: not a version
        raise CheckpointError(f"{path} has checkpoint version {version!r}; this gpumlp reads version {VERSION}")


def _check_meta(path: Path, meta: dict) -> None:
    """Every field a gpumlp checkpoint's metadata may hold, checked before anything is built."""
    check_header(path, meta)
    _check_meta_fields(path, meta)


def _check_keys(path: Path, keys, sizes, shapes) -> None:
    if set(keys) != set(shapes):
        raise CheckpointError(
            f"{path}: parameters {sorted(keys)[:8]} do not match the layers {list(sizes)} (expected {list(shapes)})"
        )


def _n_params(shapes: dict) -> int:
    """How many numbers the parameters of ``shapes`` hold: the length of each state vector."""
    return sum(int(np.prod(s)) for s in shapes.values())


def _label(key: str) -> str:
    return key.replace("state.", "state ", 1)  # "state.optimizer.m" → "state optimizer.m"


def _shape_error(path: Path, key: str, got, shape) -> CheckpointError:
    need = "the network needs" if key.startswith("state.") else "the layers need"
    return CheckpointError(f"{path}: {_label(key)} has shape {got}, {need} {shape}")


# ---------------------------------------------------------------- .npz


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
        raise CheckpointError(f"{path}: {_label(key)} is {got_dtype}, the metadata says {np.dtype(dtype).name}")
    if got_shape != shape:
        raise _shape_error(path, key, got_shape, shape)
    with zf.open(info) as f:
        arr = np.lib.format.read_array(f, allow_pickle=False)
    if not np.all(np.isfinite(arr)):
        raise CheckpointError(f"{path}: {_label(key)} contains NaN or Inf")
    return arr


def _npz_metadata(zf: zipfile.ZipFile, info, path: Path) -> dict:
    """The ``metadata`` member: a uint8 array of UTF-8 JSON, checked as metadata."""
    with zf.open(info) as m:
        shape, _, dtype = _npy_header(m, path, "metadata")
    if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path}: its metadata is not JSON text (a uint8 array, got {dtype} {shape})")
    with zf.open(info) as m:
        blob = np.lib.format.read_array(m, allow_pickle=False).tobytes()
    meta = parse_json(blob, path, MAX_METADATA_BYTES)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its metadata is not a JSON object")
    _check_meta(path, meta)
    return meta


def read_npz(source: Source) -> tuple[dict, dict]:
    """Metadata first, checked; then each array, its header checked against the metadata's layers.
    The zip directory (member count, compression, total unpacked size) is checked before any of it."""
    path = source.path
    with zipfile.ZipFile(source.f) as zf:
        infos = zf.infolist()
        check_zip_directory(infos, source.size, NPZ_LIMITS, path, CheckpointError)
        members = {info.filename.removesuffix(".npy"): info for info in infos}
        if "metadata" not in members:
            raise CheckpointError(f"{path} has no metadata array; is it a gpumlp checkpoint?")
        meta = _npz_metadata(zf, members.pop("metadata"), path)
        shapes, dtype = param_shapes(meta["sizes"]), DTYPES[meta["dtype"]]
        _check_keys(path, [k for k in members if not k.startswith("state.")], meta["sizes"], shapes)
        host = {k: _member(zf, members[k], path, k, dtype, shape) for k, shape in shapes.items()}
        n = _n_params(shapes)
        meta["state_arrays"] = {
            k.removeprefix("state."): _member(zf, info, path, k, dtype, (n,))
            for k, info in members.items()
            if k.startswith("state.")
        }
    return meta, host


def write_npz(path: Path, meta: dict, host: dict, state: dict) -> None:
    """``host`` parameters, ``state`` arrays as ``state.NAME`` and ``meta`` as JSON bytes, atomically."""
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    arrays = {**host, **{f"state.{k}": v for k, v in state.items()}}
    atomic_write(path, lambda f: np.savez(f, metadata=blob, **arrays), *WHAT)


# ---------------------------------------------------------------- .json


def _json_array(value, path: Path, key: str, dtype, shape) -> np.ndarray:
    """A JSON parameter or state vector → a finite ``dtype`` array of ``shape``; numbers only (a
    400-digit integer, a string or null is refused, not turned into inf or an object)."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):  # ragged lists
        raise CheckpointError(f"{path}: {_label(key)} is not an array of numbers") from None
    if arr.dtype.kind not in "iuf":
        raise CheckpointError(
            f"{path}: {_label(key)} is not an array of numbers (or holds an integer too large for a float)"
        )
    if arr.shape != shape:
        raise _shape_error(path, key, arr.shape, shape)
    with np.errstate(over="ignore"):
        arr = arr.astype(dtype)  # exact for what save wrote: float32 → Python float → float32
    if not np.all(np.isfinite(arr)):
        raise CheckpointError(
            f"{path}: {_label(key)} contains NaN or Inf (or a number too large for {np.dtype(dtype).name})"
        )
    return arr


def read_json(source: Source) -> tuple[dict, dict]:
    """The document's ``params`` taken out and checked against its metadata (the rest of it)."""
    path, doc = source.path, source.document()
    if not isinstance(doc.get("params"), dict):
        raise CheckpointError(f"{path} has no 'params' object; is it a gpumlp checkpoint?")
    raw = doc.pop("params")
    _check_meta(path, doc)
    shapes, dtype = param_shapes(doc["sizes"]), DTYPES[doc["dtype"]]
    _check_keys(path, raw, doc["sizes"], shapes)
    host = {k: _json_array(raw[k], path, k, dtype, shape) for k, shape in shapes.items()}
    n = _n_params(shapes)
    state = doc.get("state_arrays")
    if state is not None and not isinstance(state, dict):
        raise CheckpointError(f"{path}: state_arrays is not an object of arrays")
    doc["state_arrays"] = {k: _json_array(v, path, f"state.{k}", dtype, (n,)) for k, v in (state or {}).items()}
    return doc, host


def write_json(path: Path, meta: dict, host: dict, state: dict) -> None:
    """``meta`` with ``params`` (and ``state_arrays`` if any) as nested lists, atomically."""
    # float32 → Python float is exact, and repr round-trips a float64, so loading is bit-exact.
    doc = dict(meta, params={k: v.tolist() for k, v in host.items()})
    if state:
        doc["state_arrays"] = {k: v.tolist() for k, v in state.items()}
    atomic_write(path, lambda f: f.write(json.dumps(doc).encode("utf-8")), *WHAT)


def _is_gpumlp_json(source: Source) -> bool:
    """A JSON document with gpumlp's ``format`` or ``params`` key (whose reader then checks both)."""
    doc = source.document()
    return isinstance(doc, dict) and ("format" in doc or "params" in doc)


NPZ = Format("npz", "gpumlp npz", "npz", (".npz",), b"PK", read_npz, write_npz)
JSON = Format("json", "gpumlp JSON", "JSON", (".json",), b"{", read_json, write_json, claims=_is_gpumlp_json)
OWN = (NPZ, JSON)  # gpumlp's own formats, which `save` chooses between by the file's suffix
