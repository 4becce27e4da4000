"""IDX parsing with checks; locating, downloading, verifying and caching a dataset's files from its
record (gpumlp/data/datasets.py); splits.

Everything here lives on the host; the training loop moves arrays to the device once.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import struct
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from gpumlp.data.datasets import CHECKSUMS, DATASETS, IDX_SIZES, MNIST, Dataset, get
from gpumlp.errors import ConfigError, DataError
from gpumlp.formats.untrusted import GZIP_MAGIC, gunzip_limited, open_regular, read_limited

# MNIST's record (gpumlp/data/datasets.py), under the names this module has always had.
MNIST_FILES = MNIST.files  # SHA-256 of the *decompressed* files: mirrors serve differently compressed .gz files
MIRRORS = MNIST.mirrors
MNIST_SIZES = IDX_SIZES  # exact decompressed sizes, the same in every dataset of datasets.py
MAX_IDX_BYTES = 1 << 28  # read_idx on any other file: 256 MiB, five times the largest MNIST file
DOWNLOAD_TIMEOUT = 30.0  # seconds without progress before a mirror is given up

# IDX type codes (the third byte of the magic number) → big-endian numpy dtype
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# ---------------------------------------------------------------- IDX


def _read_bytes(path: Path, limit: int = 0, hasher=None, what: str = "", gz_hasher=None) -> bytes | bytearray:
    """The file's content, decompressed when it is gzip (by its magic bytes, not its name), at most
    ``limit`` bytes of it (default ``MAX_IDX_BYTES``): a raw file is refused by its size before it
    is read, a gzip file as soon as its decompressed content passes ``limit``. ``hasher.update``
    sees the (decompressed) content as it is read; ``gz_hasher.update`` the gzip file's own bytes
    (a file that is not gzip is then refused: only a .gz can match a digest of a .gz)."""
    limit = limit or MAX_IDX_BYTES
    what = what or f"the {limit:,} bytes gpumlp reads of an IDX file"
    f, size = open_regular(path, DataError, missing=f"cannot read {path}: No such file or directory")
    try:
        with f:
            if f.read(2) != GZIP_MAGIC:
                if gz_hasher is not None:
                    raise DataError(
                        f"{path} is not gzip-compressed, and only the published .gz file can be checked "
                        "against its published md5; put the .gz file there, or delete it so gpumlp downloads it"
                    )
                f.seek(0)
                data = read_limited(f, size, limit, path, DataError, what)
                if hasher is not None:
                    hasher.update(data)
                return data
            f.seek(0)
            return gunzip_limited(
                f if gz_hasher is None else _Hashing(f, gz_hasher), limit, path, DataError, what, hasher
            )
    except zlib.error as e:
        raise DataError(f"{path} is a corrupt gzip file ({e}); delete it and download again") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


class _Hashing:
    """A binary file whose bytes ``hasher`` sees as they are read."""

    def __init__(self, f, hasher):
        self.f, self.hasher = f, hasher

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hasher.update(data)
        return data


def _digest_and_content(path: Path, name: str, kind: str, what: str) -> tuple[bytes | bytearray, str]:
    """``path``'s decompressed content (never beyond the real file's size) and the hex digest that
    ``kind`` (a key of ``datasets.CHECKSUMS``) names, computed as the file is read."""
    limit = IDX_SIZES.get(name, MAX_IDX_BYTES)
    if kind == "sha256":
        hasher = hashlib.sha256()
        return _read_bytes(path, limit, hasher, what), hasher.hexdigest()
    hasher = hashlib.md5(usedforsecurity=False)  # the published checksum, not a security measure
    return _read_bytes(path, limit, what=what, gz_hasher=hasher), hasher.hexdigest()


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Bytes of an IDX file → numpy array with the declared shape, after checking the header.

    The header is checked against the actual length before anything is allocated, so a
    truncated or mislabelled file is a ``DataError``, never a numpy exception.
    """
    if len(data) < 4:
        raise DataError(f"{name} is too short for an IDX header ({len(data)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise DataError(f"{name} is not an IDX file (bad magic number 0x{data[:4].hex()})")
    if type_code not in IDX_DTYPES:
        raise DataError(f"{name} has unknown IDX type code 0x{type_code:02x}")
    if ndim == 0:
        raise DataError(f"{name} declares zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name} is truncated inside its header ({len(data)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[type_code]
    expected = header + int(np.prod(shape, dtype=object)) * dtype.itemsize  # exact: no overflow
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"{name} is {what}: dimensions {'×'.join(map(str, shape))} need {expected} bytes, the file has {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read a raw or gzip IDX file of at most ``max_bytes`` (decompressed), checked (see ``parse_idx``)."""
    path = Path(path)
    return parse_idx(_read_bytes(path, max_bytes), str(path))


# ---------------------------------------------------------------- locating, verifying, downloading


def default_cache_dir(dataset: str = MNIST.name) -> Path:
    """``~/.cache/gpumlp/<dataset>`` (or under ``$XDG_CACHE_HOME``): where a dataset is downloaded."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpumlp" / dataset


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


def _progress(name: str) -> Callable[[int, int | None], None]:
    """A download progress line on stderr, redrawn in place on a terminal."""
    tty = sys.stderr.isatty()
    last = [-1]

    def show(done: int, total: int | None) -> None:
        pct = int(100 * done / total) if total else -1
        if pct == last[0] or (not tty and pct not in (0, 100)):
            return
        last[0] = pct
        size = f"{done / 1e6:.1f} MB" + (f" / {total / 1e6:.1f} MB ({pct}%)" if total else "")
        end = "\r" if tty and pct != 100 else "\n"
        print(f"downloading {name}: {size}", end=end, file=sys.stderr, flush=True)

    return show


def _safe_url(url: str) -> bool:
    """HTTPS anywhere; plain HTTP only to localhost (the tests' local server)."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"))


def download_file(
    name: str,
    checksum: str,
    dest_dir: Path,
    mirrors: Sequence[str] = MIRRORS,
    timeout: float = DOWNLOAD_TIMEOUT,
    progress: bool = True,
    hint: str = "Download the MNIST files yourself and pass --data-dir DIR (or set GPUMLP_DATA_DIR)",
    kind: str = "sha256",
) -> Path:
    """Fetch ``name.gz`` from the first mirror that serves it with the right content.

    The download goes to a temporary file in ``dest_dir`` and is renamed into place only after its
    ``checksum`` matches (``kind``: the SHA-256 of its decompressed content, or the MD5 of the .gz
    itself; see ``datasets.CHECKSUMS``), so ``dest_dir`` never holds a partial or wrong file under
    the real name. Raises ``DataError`` naming every mirror's failure.
    """
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot download {name} into {dest_dir}: {e.strerror or e}; pass --data-dir DIR with a writable folder"
        ) from None
    target = dest_dir / f"{name}.gz"
    limit = IDX_SIZES.get(name, MAX_IDX_BYTES)  # decompressed; gzip never adds more than 1 MiB to it
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{name}.gz"
        if not _safe_url(url):
            failures.append(f"{url}: refused (only https, or http to localhost)")
            continue
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
        except OSError as e:
            raise DataError(
                f"cannot download {name} into {dest_dir}: {e.strerror or e}; pass --data-dir DIR with a writable folder"
            ) from None
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = resp.headers.get("Content-Length")
                show = _progress(name) if progress else (lambda done, total: None)
                done = 0
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    done += len(chunk)
                    if done > limit + (1 << 20):
                        raise OSError(f"served more than {limit + (1 << 20):,} bytes, more than {name}.gz can be")
                    show(done, int(total) if total else None)
                if total is not None and done != int(total):
                    raise OSError(f"connection closed after {done} of {total} bytes")
                out.flush()
                os.fsync(out.fileno())
            _, digest = _digest_and_content(Path(tmp), name, kind, f"the real {name}")  # hashed as it is read
            if digest != checksum:
                raise OSError(f"checksum mismatch ({kind} {digest[:12]}…, expected {checksum[:12]}…)")
            os.replace(tmp, target)
            return target
        except (OSError, http.client.HTTPException, DataError, ValueError) as e:  # URLError is an OSError
            reason = getattr(e, "reason", None) or e
            failures.append(f"{url}: {reason}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError(f"could not download {name}: " + "; ".join(failures) + f". {hint}")


def locate(rec: Dataset, data_dir: str | os.PathLike | None = None, download: bool = True) -> dict[str, Path]:
    """Path of each of the dataset's files in the folder ``search_dirs`` gives, downloading the
    missing ones into it (``download=False``: a missing file is an error naming it and the folder)."""
    (folder,) = search_dirs(data_dir, rec.name)
    where = _where(data_dir, rec.name)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{where} {folder} is a file, not a folder; give the folder that holds the {rec.title} files")
    gz_only = rec.checksum == "md5-gz"
    found = {name: find_file(name, [folder], gz_only) for name in rec.files}
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
    mirrors: Sequence[str] = MIRRORS,
    files: dict[str, str] = MNIST_FILES,
) -> dict[str, Path]:
    """``locate`` for MNIST, or for other ``files`` and ``mirrors`` checked as MNIST's are."""
    return locate(replace(MNIST, files=dict(files), mirrors=tuple(mirrors)), data_dir, download)


def _load_verified(path: Path, name: str, rec: Dataset) -> np.ndarray:
    """``path``, read (never beyond the real file's size) and hashed as it is read, then parsed."""
    fix = "delete it so gpumlp downloads it again, or fix --data-dir"
    real = f"the {IDX_SIZES[name]:,} bytes of the real {name}; {fix}"
    data, digest = _digest_and_content(path, name, rec.checksum, real)
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


def _load_decoded(paths: dict[str, Path], rec: Dataset = MNIST) -> dict[str, np.ndarray]:
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
    arrays = {name: _load_verified(paths[name], name, rec) for name in rec.files}
    tmp = None
    try:  # atomically, and only a speed-up: a read-only or full cache folder is not an error
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{rec.name}.", suffix=".tmp", dir=cache.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, cache)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
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
    arrays = _load_decoded(paths, rec)
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
