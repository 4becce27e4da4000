"""Reading files a user hands gpumlp: only regular files, every size bounded before memory is spent.

    open_regular(path, error)        a regular file opened without blocking: a FIFO, a device or a
                                     folder is refused at once instead of hanging or being read
    check_dense(f, size)             a sparse file (mostly holes) refused by its allocated size
    read_limited(f, size, limit)     the whole file, refused by its size (stat) before reading;
                                     text refused at its first NUL byte (a sparse file's holes)
    gunzip_limited(f, limit)         gzip decompressed in chunks, stopped as soon as it passes limit
    check_json_text(data, limit)     JSON text refused by size and by its count of lists and objects
                                     before ``json`` builds a single Python object
    check_zip_directory(infos, ...)  an npz's members, from its zip directory, before reading any
    read_toml(path, what, error)     a small TOML file (a config or space file), bounded, UTF-8

Each raises ``error(message)`` (a ``GpumlpError`` subclass the caller chooses) with one line that
names the file and the fix.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20  # bytes read (and decompressed) at a time
GZIP_MAGIC = b"\x1f\x8b"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: Path, error: type[Exception], missing: str | None = None) -> tuple[BinaryIO, int]:
    """``(binary file, size in bytes)`` for a regular file; ``error`` for anything else.

    O_NONBLOCK makes opening a FIFO return at once (a plain open waits for a writer forever);
    the type is then checked on the open descriptor, so the file checked is the file read.
    ``missing``: the message when ``path`` does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(missing or f"{path} not found; check the path") from None
    except OSError as e:  # ENXIO: a socket; EACCES: no permission; ELOOP: a symlink loop
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError:  # os.open's "embedded null byte": a name from a program, never a file's
        raise error(f"{str(path)!r} is not a file name: it holds a NUL character") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise error(f"{path} is {_kind(st.st_mode)}, not a regular file; give a file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st.st_size


def check_dense(f: BinaryIO, size: int, path: Path, error: type[Exception], min_size: int = 1 << 26) -> None:
    """Refuse a file above ``min_size`` bytes with less than 1/16 of it on disk: a sparse file,
    whose holes read as zeros, costs nothing to make and its apparent size to read. Files gpumlp
    writes are never sparse, and compressing filesystems shrink weights by far less than 16×."""
    blocks = getattr(os.fstat(f.fileno()), "st_blocks", 0)
    # 0: not reported (some network and FUSE filesystems); an npz's directory is real bytes, and a
    # JSON file of nothing but holes is refused at its first NUL byte anyway
    if blocks and size > min_size and blocks * 512 * 16 < size:
        raise error(
            f"{path} is a sparse file ({size:,} bytes, {blocks * 512:,} on disk): its holes read as zeros; "
            "a real one can be copied whole with `cp --sparse=never`"
        )


def read_limited(
    f: BinaryIO, size: int, limit: int, path: Path, error: type[Exception], what: str, text: bool = False
) -> bytes | bytearray:
    """All of ``f`` (``size`` bytes by stat), refused before reading when over ``limit``: a sparse
    3 GB file costs nothing to create and would cost 3 GB to read. ``text``: read in chunks and
    refuse the first NUL byte, which text never holds (a sparse file's holes read as NULs)."""
    if size > limit:
        raise error(f"{path} is {size:,} bytes, more than {what}")
    if not text:
        data = f.read(size + 1)  # read(n) allocates n bytes up front: never ask for the limit itself
    else:
        data = bytearray()
        while chunk := f.read(min(CHUNK, size + 1 - len(data))):
            if b"\0" in chunk:
                raise error(f"{path} holds NUL bytes at byte {len(data) + chunk.index(0):,}: it is not text")
            data += chunk
            if len(data) > size:
                break
    if len(data) != size:
        raise error(f"{path} changed while being read; try again")
    return data


def gunzip_limited(f: BinaryIO, limit: int, path: Path, error: type[Exception], what: str, hasher=None) -> bytearray:
    """The decompressed content of the gzip file ``f`` (one or more members), decompressed in
    chunks and refused as soon as it passes ``limit`` bytes; ``hasher.update`` sees every
    decompressed chunk as it is made. A 2.9 MB gzip that would inflate to 5.8 GB costs ``limit``."""
    try:
        return _gunzip(f, limit, path, error, what, hasher)
    except zlib.error as e:
        raise error(f"{path} is a corrupt gzip file ({e}); delete it and download again") from None


def _gunzip(f: BinaryIO, limit: int, path: Path, error: type[Exception], what: str, hasher) -> bytearray:
    out = bytearray()
    d = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
    data = f.read(CHUNK)
    if not data:
        raise error(f"{path} is empty")
    while True:
        if not data:
            data = f.read(CHUNK)
            if not data:
                break
        piece = d.decompress(data, limit + 1 - len(out))  # max_length ≥ 1: never "unlimited"
        out += piece
        if hasher is not None:
            hasher.update(piece)
        if len(out) > limit:
            raise error(f"{path} decompresses to more than {what}")
        data = d.unconsumed_tail
        if d.eof:
            data = d.unused_data or f.read(CHUNK)
            if not data:
                return out
            if data[:2] != GZIP_MAGIC[: len(data[:2])]:
                raise error(f"{path} is a corrupt gzip file (garbage after its end); delete it and download again")
            d = zlib.decompressobj(wbits=31)
    if not d.eof:
        raise error(f"{path} is a corrupt gzip file (it ends early: truncated); delete it and download again")
    return out


def check_json_text(data: bytes, limit: int, max_containers: int, path: Path, error: type[Exception], what: str):
    """Refuse JSON text whose parse would cost far more memory than its size: ``json`` turns
    ``[],`` (3 bytes) into a 56-byte list, so a file of nested or empty lists multiplies ~20×.
    Counting ``[`` and ``{`` bytes over-counts (strings may hold them), never under-counts."""
    if len(data) > limit:
        raise error(f"{path} is {len(data):,} bytes, more than {what}")
    containers = data.count(b"[") + data.count(b"{")
    if containers > max_containers:
        raise error(
            f"{path} holds {containers:,} JSON lists and objects, more than any checkpoint's "
            f"{max_containers:,}; is it a checkpoint?"
        )


def check_zip_directory(
    infos: list[zipfile.ZipInfo], file_size: int, limits: dict, path: Path, error: type[Exception]
) -> None:
    """Check an npz's zip directory before any member is read: how many members, each stored or
    deflated (numpy writes only these) and not encrypted, and their total unpacked size.

    ``limits``: ``members`` (count), ``bytes`` (total unpacked), ``ratio`` (unpacked bytes per
    packed byte allowed to deflated members beyond ``slack`` bytes). A stored member unpacks to
    its own size, so only deflate can amplify: 6 MB of deflated zeros declare 6 GB."""
    if len(infos) > limits["members"]:
        raise error(f"{path} has {len(infos):,} members, more than any gpumlp checkpoint ({limits['members']})")
    total = deflated = packed = 0
    for info in infos:
        name = info.filename
        if info.flag_bits & 0x1:
            raise error(f"{path}: member {name!r} is encrypted; gpumlp checkpoints never are")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise error(
                f"{path}: member {name!r} uses zip compression method {info.compress_type}; "
                "numpy writes only stored or deflated members (np.savez, np.savez_compressed)"
            )
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise error(f"{path}: member {name!r} is damaged (stored, but its sizes disagree)")
        total += info.file_size
        if info.compress_type == zipfile.ZIP_DEFLATED:
            deflated += info.file_size
            packed += info.compress_size
    if total > limits["bytes"]:
        raise error(f"{path} unpacks to {total:,} bytes, more than any gpumlp checkpoint ({limits['bytes']:,})")
    if deflated > limits["slack"] + limits["ratio"] * min(packed, file_size):
        raise error(
            f"{path}: its compressed members unpack to {deflated:,} bytes from {packed:,}, far more "
            "than compressed network weights ever do; refused as a zip bomb"
        )


MAX_TOML_BYTES = 1 << 20  # a config or space file: a few hundred bytes of options, never a megabyte


def read_toml(path: str | os.PathLike, what: str, error: type[Exception]) -> dict:
    """The TOML document at ``path`` (``what``: "the config file"), read as ``read_limited`` reads:
    a FIFO or device refused without waiting on it (``/dev/zero`` is never read whole), at most
    ``MAX_TOML_BYTES``; not UTF-8 or not TOML is one ``error`` that names the line."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    path = Path(path)
    f, size = open_regular(path, error, missing=f"cannot read {what} {path}: no such file; check the path")
    with f:
        data = read_limited(f, size, MAX_TOML_BYTES, path, error, f"{what} holds ({MAX_TOML_BYTES:,})")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise error(f"{path} is UTF-16 text (as PowerShell's > writes it); save it as UTF-8")
    try:
        return tomllib.loads(bytes(data).decode("utf-8-sig"))  # a byte-order mark (Notepad's) skipped
    except UnicodeDecodeError as e:
        raise error(f"{path} is not a TOML file: it is not UTF-8 text (byte {e.start:,})") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path} is not a valid TOML file: {e}") from None
    except ValueError:  # int() refuses a whole number of over 4,300 digits (CVE-2020-10735)
        raise error(f"{path} holds a whole number of more than 4,300 digits; no option takes one") from None
