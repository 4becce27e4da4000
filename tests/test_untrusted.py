"""gpumlp.formats.untrusted: the bounded readers every user-supplied file goes through."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import zipfile

import pytest

from gpumlp.errors import DataError
from gpumlp.formats import untrusted


def gunzip(data: bytes, limit: int, hasher=None):
    return untrusted.gunzip_limited(io.BytesIO(data), limit, "f.gz", DataError, "the limit", hasher)


def test_gunzip_matches_gzip_decompress_and_hashes_as_it_reads():
    payload = os.urandom(3 << 20) + bytes(5 << 20)  # several chunks in, several out
    hasher = hashlib.sha256()
    assert gunzip(gzip.compress(payload), len(payload), hasher) == payload
    assert hasher.hexdigest() == hashlib.sha256(payload).hexdigest()


def test_gunzip_reads_every_member_of_a_concatenated_gzip():
    assert gunzip(gzip.compress(b"abc") + gzip.compress(b"def"), 6) == b"abcdef"


@pytest.mark.parametrize("limit", [1, 65_536, 99_999])
def test_gunzip_stops_as_soon_as_the_limit_is_passed(limit):
    with pytest.raises(DataError, match="decompresses to more than the limit"):
        gunzip(gzip.compress(bytes(100_000)), limit)
    assert len(gunzip(gzip.compress(bytes(100_000)), 100_000)) == 100_000


@pytest.mark.parametrize(
    "data,fragment",
    [
        (gzip.compress(b"x" * 1000)[:-12], "ends early: truncated"),
        (gzip.compress(b"abc") + b"garbage", "garbage after its end"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"\xff\xff\xff", "corrupt gzip file (Error -3"),
        (b"\x1f\x8b", "ends early"),
    ],
)
def test_gunzip_damage_is_one_data_error(data, fragment):
    with pytest.raises(DataError, match=re.escape(fragment)):
        gunzip(data, 10_000)


def test_open_regular_refuses_what_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for path, fragment in [(tmp_path / "fifo", "is a FIFO"), (tmp_path, "is a directory"),
                           (tmp_path / "none", "not found")]:  # fmt: skip
        with pytest.raises(DataError, match=fragment):
            untrusted.open_regular(path, DataError)
    (tmp_path / "f").write_bytes(b"12345")
    f, size = untrusted.open_regular(tmp_path / "f", DataError)
    with f:
        assert size == 5 and f.read() == b"12345"


def test_read_limited_refuses_by_size_before_reading(tmp_path):
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(1 << 40)  # 1 TiB by stat, nothing on disk
    f, size = untrusted.open_regular(path, DataError)
    with f, pytest.raises(DataError, match="is 1,099,511,627,776 bytes, more than the limit"):
        untrusted.read_limited(f, size, 1 << 20, path, DataError, "the limit")


def test_zip_directory_checks(tmp_path):
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a", bytes(10_000_000))  # 10 MB of zeros in ~10 KB
        zf.writestr("b", b"x")
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    limits = {"members": 10, "bytes": 1 << 30, "ratio": 4, "slack": 1 << 20}
    with pytest.raises(DataError, match="zip bomb"):
        untrusted.check_zip_directory(infos, path.stat().st_size, limits, path, DataError)
    untrusted.check_zip_directory(infos, path.stat().st_size, dict(limits, slack=1 << 24), path, DataError)
    with pytest.raises(DataError, match="unpacks to 10,000,001 bytes"):
        untrusted.check_zip_directory(
            infos, path.stat().st_size, dict(limits, bytes=10**7, slack=1 << 24), path, DataError
        )
    with pytest.raises(DataError, match="has 2 members"):
        untrusted.check_zip_directory(infos, path.stat().st_size, dict(limits, members=1), path, DataError)


def test_json_text_is_counted_before_it_is_parsed():
    with pytest.raises(DataError, match="holds 1,001 JSON lists and objects"):
        untrusted.check_json_text(b"[" + b"{}," * 999 + b"{}]", 1 << 20, 1000, "x.json", DataError, "x")
    with pytest.raises(DataError, match="is 11 bytes, more than x"):
        untrusted.check_json_text(b"[1,2,3,4,5]", 10, 1000, "x.json", DataError, "x")
    untrusted.check_json_text(b'{"a": [1, 2]}', 1 << 20, 2, "x.json", DataError, "x")


def test_text_is_refused_at_its_first_nul_byte(tmp_path):
    """A sparse file's holes read as NULs, which no JSON or JSONL text holds: refused at the first
    chunk, not after reading the file's whole apparent size."""
    path = tmp_path / "sparse.json"
    with open(path, "wb") as f:
        f.write(b'{"a": 1}')
        f.truncate(1 << 30)
    f, size = untrusted.open_regular(path, DataError)
    with f, pytest.raises(DataError, match="holds NUL bytes at byte 8: it is not text"):
        untrusted.read_limited(f, size, 1 << 31, path, DataError, "the limit", text=True)
    path.write_bytes(b'{"a": [1, 2, 3]}' * 100_000)  # several chunks, no NUL
    f, size = untrusted.open_regular(path, DataError)
    with f:
        assert untrusted.read_limited(f, size, 1 << 31, path, DataError, "x", text=True) == path.read_bytes()
