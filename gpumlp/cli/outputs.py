"""Which files a command may write: never its own input, never a file a run is saving, and never
a file of another type, nor one gpumlp did not write unless the user named it.

Every PNG gpumlp writes carries a ``Software: gpumlp`` text chunk (``PNG_METADATA``); in a folder
the user names (``gpumlp test --plot DIR``) only such files are replaced, and any other takes the
next free ``-2``, ``-3``, … name.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from gpumlp.errors import GpumlpError
from gpumlp.formats.atomic import RunLock, numbered, path_error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_METADATA = {"Software": "gpumlp"}  # a tEXt chunk: how gpumlp recognises its own pictures
_MAX_CHUNKS = 64  # matplotlib writes its text chunks first, before the image data


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file (through links; False when either does not exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_png(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def written_by_gpumlp(path: Path) -> bool:
    """Whether ``path`` is a PNG whose text chunks say gpumlp wrote it (read: the chunk headers and
    the text chunks only, at most ``_MAX_CHUNKS`` of them)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                return False
            for _ in range(_MAX_CHUNKS):
                head = f.read(8)
                if len(head) < 8:
                    return False
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IDAT" or length > 1 << 16:
                    return False
                data = f.read(length + 4)[:length]  # the chunk and its CRC
                if kind == b"tEXt" and data.partition(b"\0")[::2] == (b"Software", b"gpumlp"):
                    return True
    except OSError:
        return False
    return False


def check_png_out(out: Path, inputs: list[Path]) -> Path:
    """Refuse an ``--out`` that is one of ``inputs``, an existing file that is not a PNG, or a file a
    gpumlp run holds; else ``out``. The user named it, so an existing PNG is replaced."""
    for source in inputs:
        if same_file(out, source):
            raise GpumlpError(f"--out {out} is the input {source}: choose another --out (a .png)")
    try:
        exists = out.exists() or out.is_symlink()
    except OSError as e:
        raise GpumlpError(path_error(out, e, "the --out file", "choose another --out")) from None
    if exists and out.is_file() and not is_png(out):
        raise GpumlpError(f"--out {out} exists and is not a PNG: gpumlp replaces only PNGs; choose another --out")
    RunLock(out).refuse_if_held("write the picture")
    return out


def own_png(path: Path, avoid: tuple[Path, ...] = (), option: str = "--plot") -> Path:
    """``path`` in a folder the user named: itself when free or a PNG gpumlp wrote, else the first
    ``-2``, ``-3``, … name that is free or gpumlp's own. Never one of ``avoid`` (the command's
    inputs, the files it has just written); ``option`` names the folder's flag in the error."""
    for candidate in numbered(path):
        if any(same_file(candidate, other) for other in avoid):
            continue
        if not (candidate.exists() or candidate.is_symlink()) or written_by_gpumlp(candidate):
            return candidate
    raise GpumlpError(f"{path.parent} holds {path.stem}-2 … -9999 already; choose another {option} folder")
