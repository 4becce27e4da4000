"""IDX files: the format MNIST and its relatives ship in, parsed with every header field checked.

A file is read whole (decompressed when it is gzip, by its magic bytes), never beyond a bound
known before it is read, and hashed as it is read where a checksum is to be compared.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from gpumlp.data.datasets import IDX_SIZES
from gpumlp.errors import DataError
from gpumlp.formats.untrusted import GZIP_MAGIC, gunzip_limited, open_regular, read_limited

MAX_IDX_BYTES = 1 << 28  # read_idx on any other file: 256 MiB, five times the largest MNIST file

# IDX type codes (the third byte of the magic number) → big-endian numpy dtype
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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


def digest_and_content(
    path: Path, name: str, kind: str, what: str, data: bytes | None = None
) -> tuple[bytes | bytearray, str]:
    """``path``'s decompressed content (never beyond the real file's size) and the hex digest that
    ``kind`` (a key of ``datasets.CHECKSUMS``) names, computed as the file is read; ``data``: its bytes
    held in memory instead (``path`` then only names it)."""
    limit = IDX_SIZES.get(name, MAX_IDX_BYTES)
    if kind == "sha256":
        hasher = hashlib.sha256()
        return _read_bytes(path, limit, hasher, what, data=data), hasher.hexdigest()
    hasher = hashlib.md5(usedforsecurity=False)  # the published checksum, not a security measure
    return _read_bytes(path, limit, what=what, gz_hasher=hasher, data=data), hasher.hexdigest()


def _read_bytes(
    path: Path, limit: int = 0, hasher=None, what: str = "", gz_hasher=None, data: bytes | None = None
) -> bytes | bytearray:
    """The file's content, decompressed when it is gzip (by its magic bytes, not its name), at most
    ``limit`` bytes of it (default ``MAX_IDX_BYTES``): a raw file is refused by its size before it
    is read, a gzip file as soon as its decompressed content passes ``limit``. ``hasher.update``
    sees the (decompressed) content as it is read; ``gz_hasher.update`` the gzip file's own bytes
    (a file that is not gzip is then refused: only a .gz can match a digest of a .gz). ``data``: the
    file's bytes, already in memory (a download not yet written), read instead of ``path``."""
    limit = limit or MAX_IDX_BYTES
    what = what or f"the {limit:,} bytes gpumlp reads of an IDX file"
    if data is not None:
        f, size = io.BytesIO(data), len(data)
    else:
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
