"""Downloading a dataset's files: from the first of its mirrors that serves the right content.

A file is fetched into memory (never more than it can be), checked against its record's checksum
(``gpumlp.data.datasets``), and only then written under its real name, atomically
(``gpumlp.formats.atomic.atomic_write``): a folder never holds a partial or wrong file.
"""

from __future__ import annotations

import http.client
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from gpumlp.data.datasets import IDX_SIZES, MNIST
from gpumlp.data.idx import MAX_IDX_BYTES, digest_and_content
from gpumlp.errors import DataError
from gpumlp.formats.atomic import atomic_write, make_folders, remove_folders

DOWNLOAD_TIMEOUT = 30.0  # seconds without progress before a mirror is given up
GZIP_SLACK = 1 << 20  # bytes gzip may add to a file's decompressed size: more is not the file
WRITABLE_FIX = "pass --data-dir DIR with a writable folder"


def download_file(
    name: str,
    checksum: str,
    dest_dir: Path,
    mirrors: Sequence[str] = MNIST.mirrors,
    timeout: float = DOWNLOAD_TIMEOUT,
    progress: bool = True,
    hint: str = "Download the MNIST files yourself and pass --data-dir DIR (or set GPUMLP_DATA_DIR)",
    kind: str = "sha256",
) -> Path:
    """Fetch ``name.gz`` from the first mirror that serves it with the right content.

    The download is held in memory and written to ``dest_dir`` (atomically) only after its
    ``checksum`` matches (``kind``: the SHA-256 of its decompressed content, or the MD5 of the .gz
    itself; see ``datasets.CHECKSUMS``), so ``dest_dir`` never holds a partial or wrong file under
    the real name. Raises ``DataError`` naming every mirror's failure.
    """
    try:
        made = make_folders(dest_dir)
    except OSError as e:
        raise DataError(f"cannot download {name} into {dest_dir}: {e.strerror or e}; {WRITABLE_FIX}") from None
    target = dest_dir / f"{name}.gz"
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{name}.gz"
        if not _safe_url(url):
            failures.append(f"{url}: refused (only https, or http to localhost)")
            continue
        try:
            data = fetch(url, name, timeout, _progress(name) if progress else None)
            _, digest = digest_and_content(target, name, kind, f"the real {name}", data)  # hashed as it is read
            if digest != checksum:
                raise OSError(f"checksum mismatch ({kind} {digest[:12]}…, expected {checksum[:12]}…)")
        except (OSError, http.client.HTTPException, DataError, ValueError) as e:  # URLError is an OSError
            failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
            continue
        what = f"the downloaded {name}.gz"
        return atomic_write(target, lambda f, data=data: f.write(data), what, WRITABLE_FIX, DataError)
    remove_folders(made)  # a failed download leaves no empty cache folders behind
    raise DataError(f"could not download {name}: " + "; ".join(failures) + f". {hint}")


def fetch(url: str, name: str, timeout: float = DOWNLOAD_TIMEOUT, show: Callable | None = None) -> bytes:
    """The body ``url`` serves for ``name.gz``, whole: at most the file's decompressed size plus
    ``GZIP_SLACK`` (the record's size, else ``MAX_IDX_BYTES``), and as long as its Content-Length.
    ``show(done, total)`` is told the progress. Raises OSError (a URLError too) or HTTPException."""
    limit = IDX_SIZES.get(name, MAX_IDX_BYTES) + GZIP_SLACK
    chunks, done = [], 0
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        total = resp.headers.get("Content-Length")
        while chunk := resp.read(1 << 16):
            chunks.append(chunk)
            done += len(chunk)
            if done > limit:
                raise OSError(f"served more than {limit:,} bytes, more than {name}.gz can be")
            if show is not None:
                show(done, int(total) if total else None)
    if total is not None and done != int(total):
        raise OSError(f"connection closed after {done} of {total} bytes")
    return b"".join(chunks)


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
