"""Finding a dataset's files (downloading the missing ones), verifying them against their record
(gpumlp/data/datasets.py), caching the decoded arrays, and the splits training uses.

Everything here lives on the host; the training loop moves arrays to the device once. IDX parsing
is ``gpumlp.data.idx``; downloading, ``gpumlp.data.download``.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from gpumlp.data.datasets import CHECKSUMS, DATASETS, IDX_SIZES, MNIST, Dataset, get
from gpumlp.data.download import download_file
from gpumlp.data.idx import digest_and_content, parse_idx
from gpumlp.errors import ConfigError, DataError
from gpumlp.formats.atomic import atomic_write, path_error


def default_cache_dir(dataset: str = MNIST.name) -> Path:
    """``~/.cache/gpumlp/<dataset>`` (or under ``$XDG_CACHE_HOME``): where a dataset is downloaded.
    An empty ``$HOME`` is passed over for the account's home folder: Python would read it as ``/``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(_home(), ".cache")
    return Path(base) / "gpumlp" / dataset


def _home() -> str:
    home = os.environ.get("HOME")
    if home:
        return home
    try:
        import pwd

        home = pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError):  # Windows, or an account without a passwd entry
        home = os.path.expanduser("~") if os.name == "nt" else ""
    if not home or home == "/":
        raise DataError(
            "$HOME is empty and this account has no home folder for the dataset cache: "
            "set GPUMLP_DATA_DIR or XDG_CACHE_HOME, or pass --data-dir DIR"
        )
    return home


def search_dirs(data_dir: str | os.PathLike | None = None, dataset: str = MNIST.name) -> list[Path]:
    """Where a dataset is looked for: the folder the user named (``--data-dir``, else
    ``$GPUMLP_DATA_DIR``) and only there; the dataset's cache folder when they named none. A named
    folder is never passed over for the cache: a wrong ``--data-dir`` must not go unnoticed."""
    named = data_dir or os.environ.get("GPUMLP_DATA_DIR")
    return [Path(named)] if named else [default_cache_dir(dataset)]


def _where(data_dir, dataset: str = MNIST.name) -> str:
    """How the user named the folder, for messages."""
    if data_dir and Path(data_dir) == default_cache_dir(dataset):
        return "the cache folder"
    if data_dir:
        return "--data-dir"
    return "$GPUMLP_DATA_DIR" if os.environ.get("GPUMLP_DATA_DIR") else "the cache folder"


def find_file(name: str, dirs: Sequence[Path], gz_only: bool = False) -> Path | None:
    """The first ``name`` or ``name.gz`` in ``dirs`` (only ``name.gz`` with ``gz_only``)."""
    for d in dirs:
        for candidate in (d / f"{name}.gz",) if gz_only else (d / name, d / f"{name}.gz"):
            if candidate.exists():
                return candidate
    return None


def locate(rec: Dataset, data_dir: str | os.PathLike | None = None, download: bool = True) -> dict[str, Path]:
    """Path of each of the dataset's files in the folder ``search_dirs`` gives, downloading the
    missing ones into it (``download=False``: a missing file is an error naming it and the folder)."""
    (folder,) = search_dirs(data_dir, rec.name)
    where = _where(data_dir, rec.name)
    try:  # a name too long or a loop of links: one line, before anything is downloaded
        if folder.exists() and not folder.is_dir():
            raise DataError(
                f"{where} {folder} is a file, not a folder; give the folder that holds the {rec.title} files"
            )
        found = {name: find_file(name, [folder], rec.checksum == "md5-gz") for name in rec.files}
    except OSError as e:
        what = where if where.startswith("the ") else f"the {where} folder"
        raise DataError(path_error(folder, e, what, "pass another --data-dir")) from None
    missing = [name for name, path in found.items() if path is None]
    listed = ", ".join(rec.stored_name[name] for name in missing)
    if missing and not download:
        raise DataError(
            f"{rec.title} files not found in {folder} ({where}): {listed}; "
            "pass --data-dir DIR with the folder that holds them, or set GPUMLP_DATA_DIR"
        )
    hint = f"Put the {rec.title} files in {folder} yourself, or pass --data-dir DIR with the folder that holds them"
    for name in missing:
        try:
            found[name] = download_file(name, rec.files[name], folder, rec.mirrors, hint=hint, kind=rec.checksum)
        except DataError as e:
            raise DataError(f"{rec.title} files not found in {folder} ({where}): {listed}; {e}") from None
    return found


def locate_mnist(
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    mirrors: Sequence[str] = MNIST.mirrors,
    files: dict[str, str] = MNIST.files,
) -> dict[str, Path]:
    """``locate`` for MNIST, or for other ``files`` and ``mirrors`` checked as MNIST's are."""
    return locate(replace(MNIST, files=dict(files), mirrors=tuple(mirrors)), data_dir, download)


def _load_verified(path: Path, name: str, rec: Dataset, where: str = "--data-dir") -> np.ndarray:
    """``path``, read (never beyond the real file's size) and hashed as it is read, then parsed;
    ``where`` says how its folder was named (``_where``), for the fix a message names."""
    fix = "delete it so gpumlp downloads it again" + ("" if where.startswith("the ") else f", or fix {where}")
    real = f"the {IDX_SIZES[name]:,} bytes of the real {name}; {fix}"
    data, digest = digest_and_content(path, name, rec.checksum, real)
    expected = rec.files[name]
    if digest != expected:
        shared = f" ({', '.join(d.title for d in DATASETS.values())} share file names: keep each in its own folder)"
        raise DataError(
            f"{path} is not the {rec.title} file it is named after ({rec.checksum} {digest[:12]}…, expected "
            f"{expected[:12]}…, the {CHECKSUMS[rec.checksum]}); {fix}{shared}"
        )
    return parse_idx(data, str(path))


def decoded_cache_path(paths: dict[str, Path], dataset: str = MNIST.name) -> Path:
    """Where the decoded arrays of these four files are kept: named after their paths, sizes and
    modification times, so a changed, replaced or moved file never matches an old cache."""
    stamp = [(name, str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for name, p in sorted(paths.items())]
    key = hashlib.sha256(repr(stamp).encode()).hexdigest()[:20]
    return default_cache_dir().parent / "decoded" / f"{dataset}-{key}.npz"


def _load_decoded(paths: dict[str, Path], rec: Dataset = MNIST, where: str = "--data-dir") -> dict[str, np.ndarray]:
    """The four arrays (uint8): from the decoded cache when the source files are unchanged since
    they were verified, else decompressed, verified by their checksums and parsed, then cached."""
    cache = decoded_cache_path(paths, rec.name)
    try:
        if cache.is_file():  # never a FIFO: np.load would wait on it
            with np.load(cache, allow_pickle=False) as z:
                arrays = {name: z[name] for name in rec.files}
            # each array exactly what its file decodes to: uint8, and with its IDX header (4 + 4·ndim
            # bytes) the real file's size
            if all(a.dtype == np.uint8 and 4 + 4 * a.ndim + a.nbytes == IDX_SIZES[n] for n, a in arrays.items()):
                return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # no cache yet, or a damaged one: decode again
    arrays = {name: _load_verified(paths[name], name, rec, where) for name in rec.files}
    try:  # atomically, and only a speed-up: a read-only or full cache folder is not an error
        atomic_write(cache, lambda f: np.savez(f, **arrays), "the decoded cache", error=DataError)
    except DataError:
        pass
    return arrays


def load_dataset(dataset: str | Dataset = MNIST.name, data_dir: str | os.PathLike | None = None, download: bool = True):
    """``(X_train, y_train, X_test, y_test)`` of ``--dataset`` (a name or a record) on the host,
    verified by the record's checksums.

    Images are float32 of shape (60000, 784) and (10000, 784), pixel / the record's
    ``input_divisor`` (255: [0, 1]); labels are uint8. The decoded arrays are cached
    (``~/.cache/gpumlp/decoded``) for files verified before and unchanged since.
    """
    rec = get(dataset) if isinstance(dataset, str) else dataset
    paths = locate(rec, data_dir, download=download)
    arrays = _load_decoded(paths, rec, _where(data_dir, rec.name))
    X_train = images_to_float(arrays["train-images-idx3-ubyte"], rec.input_divisor)
    X_test = images_to_float(arrays["t10k-images-idx3-ubyte"], rec.input_divisor)
    y_train, y_test = arrays["train-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    check_pair(X_train, y_train, "training")
    check_pair(X_test, y_test, "test")
    return X_train, y_train, X_test, y_test


def load_mnist(data_dir: str | os.PathLike | None = None, download: bool = True):
    """``load_dataset("mnist", ...)``: images float32 in [0, 1] (60000, 784) and (10000, 784), labels uint8."""
    return load_dataset(MNIST, data_dir, download)


def images_to_float(images: np.ndarray, divisor: float = 255.0) -> np.ndarray:
    """(n, 28, 28) uint8 → (n, 784) float32 pixels / ``divisor`` (255: into [0, 1])."""
    if images.dtype != np.uint8:
        raise DataError(f"expected uint8 pixels (IDX type 0x08), got {images.dtype}")
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"expected 28×28 images, got an array of shape {images.shape}")
    return np.divide(images.reshape(len(images), -1), np.float32(divisor), dtype=np.float32)  # one pass, exact


def check_pair(X: np.ndarray, y: np.ndarray, what: str) -> None:
    if y.ndim != 1 or len(X) != len(y):
        raise DataError(f"the {what} images ({len(X)}) and labels ({y.shape}) do not match")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"the {what} labels are {y.dtype}, not integers; digits must be 0–9")
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise DataError(f"the {what} labels contain {bad}; digits must be 0–9")


def split(X_train, y_train, X_test, y_test, train_size: int, val_size: int, test_size: int):
    """Training images from the start of the training file, validation images right after them
    (never overlapping), test images from the start of the test file."""
    if train_size + val_size > len(X_train):
        raise ConfigError(
            f"--train-size {train_size} + --val-size {val_size} = {train_size + val_size} exceeds "
            f"the {len(X_train)} images of the training file; lower one of them"
        )
    if test_size > len(X_test):
        raise ConfigError(f"--test-size {test_size} exceeds the {len(X_test)} test images; lower it")
    train = X_train[:train_size], y_train[:train_size]
    val = X_train[train_size : train_size + val_size], y_train[train_size : train_size + val_size]
    test = X_test[:test_size], y_test[:test_size]
    return train, val, test
