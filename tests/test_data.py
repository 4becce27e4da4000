"""Tests for gpumlp.data.load, idx and download: IDX parsing, conversion, splits, locating, downloading, real MNIST.

Every file these tests read is written by the tests themselves, except in the real-MNIST tests,
which read the folder conftest.py finds as gpumlp does (--data-dir, $GPUMLP_DATA_DIR, the cache).
Downloads go only to an HTTP server on 127.0.0.1 that the tests start; ``$XDG_CACHE_HOME`` points
into ``tmp_path`` for every test, so the real cache is never read or written.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest

from gpumlp.data import download as fetching
from gpumlp.data import idx
from gpumlp.data import load as data
from gpumlp.data.datasets import IDX_SIZES, MNIST
from gpumlp.errors import ConfigError, DataError
from standins.local_server import serve

pytestmark = pytest.mark.usefixtures("isolated_env")  # no test sees the user's cache, data or proxies


# ---------------------------------------------------------------- IDX helpers

TYPE_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(type_code: int, dims: tuple[int, ...], body: bytes, magic: int = 0) -> bytes:
    """An IDX file: 16-bit magic (0), type code, ndim, big-endian 32-bit dims, body."""
    header = struct.pack(">HBB", magic, type_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    return header + body


def idx_of(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (big-endian body, type code from its dtype)."""
    kind = f"{array.dtype.kind}{array.dtype.itemsize}"
    return idx_bytes(TYPE_CODES[kind], array.shape, array.astype(array.dtype.newbyteorder(">")).tobytes())


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def sample_images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def sample_labels(n: int = 5) -> np.ndarray:
    return (np.arange(n) % 10).astype(np.uint8)


def assert_data_error(fn: Callable[[], object], *fragments: str) -> str:
    """``fn()`` raises exactly ``DataError`` (not a numpy, struct or OS error) naming ``fragments``."""
    with pytest.raises(DataError) as info:
        fn()
    message = str(info.value)
    assert type(info.value) is DataError
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---------------------------------------------------------------- IDX reader: good files


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_round_trips_images_and_labels(tmp_path, compress):
    """A 3-D uint8 images file and a 1-D labels file read back exactly, raw or gzipped."""
    images, labels = sample_images(), sample_labels()
    for name, array in (("images", images), ("labels", labels)):
        raw = idx_of(array)
        path = tmp_path / (f"{name}.gz" if compress else name)
        path.write_bytes(gzip.compress(raw) if compress else raw)
        got = idx.read_idx(path)
        assert got.dtype == np.uint8
        assert got.shape == array.shape
        np.testing.assert_array_equal(got, array)


def test_gzip_detection_is_by_magic_not_name(tmp_path):
    """A raw file named .gz and a gzip file without .gz both read correctly."""
    images = sample_images(2, seed=1)
    raw = idx_of(images)
    (tmp_path / "raw.gz").write_bytes(raw)
    (tmp_path / "packed").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "raw.gz"), images)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "packed"), images)


@pytest.mark.parametrize(
    "values",
    [
        np.array([-128, -1, 0, 127], dtype=np.int8),
        np.array([[-32768, -2], [1, 32767]], dtype=np.int16),
        np.array([-(2**31), -2, 0, 1, 2**31 - 1], dtype=np.int32),
        np.array([[1.5, -0.25, 0.0], [np.inf, 3.0e38, -1e-30]], dtype=np.float32),
        np.array([np.pi, -1e300, 5e-324], dtype=np.float64),
    ],
    ids=lambda a: a.dtype.name,
)
def test_parse_idx_decodes_big_endian_non_uint8_types(values):
    """Type codes 0x09, 0x0B, 0x0C, 0x0D, 0x0E decode big-endian bodies into native arrays."""
    got = idx.parse_idx(idx_of(values))
    assert got.dtype == values.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, values)


def test_parse_idx_int32_known_bytes():
    """0x0C reads 4-byte big-endian integers: 00 00 01 02 is 258, FF FF FF FE is -2."""
    got = idx.parse_idx(idx_bytes(0x0C, (2,), bytes.fromhex("00000102 FFFFFFFE")))
    assert got.tolist() == [258, -2]


# ---------------------------------------------------------------- IDX reader: bad files

GOOD = idx_of(sample_images(2))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "too short"),
        (b"\x00\x00", "too short"),
        (b"\x01\x00" + GOOD[2:], "bad magic"),
        (b"\x00\x00\x0a\x03" + GOOD[4:], "unknown IDX type code 0x0a"),
        (b"\x00\x00\x08\x00", "zero dimensions"),
        (GOOD[:9], "truncated inside its header"),
        (GOOD[:-1], "truncated"),
        (GOOD[:16], "truncated"),
        (GOOD + b"\x00", "longer than its header says"),
    ],
    ids=[
        "empty",
        "two-bytes",
        "bad-magic",
        "unknown-type",
        "zero-dims",
        "truncated-header",
        "truncated-body",
        "header-only",
        "body-too-long",
    ],
)
def test_bad_idx_files_raise_data_error(tmp_path, content, fragment):
    """Each malformed IDX file is a DataError that names the file and the problem."""
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    assert_data_error(lambda: idx.read_idx(path), fragment, str(path))
    assert_data_error(lambda: idx.parse_idx(content, "thing"), fragment, "thing")


@pytest.mark.parametrize(
    "dims",
    [(4_000_000_000, 4_000_000_000), (65536, 65536, 65536, 65536)],
    ids=["huge", "product-wraps-int64-to-zero"],
)
def test_huge_declared_size_is_refused_without_allocating(dims):
    """A header declaring absurd dimensions over a tiny body is refused at once (exact size arithmetic)."""
    content = idx_bytes(0x08, dims, b"" if len(dims) == 4 else b"\x00" * 10)
    start = time.perf_counter()
    assert_data_error(lambda: idx.parse_idx(content), "truncated", "×".join(map(str, dims)))
    assert time.perf_counter() - start < 1.0


def test_corrupt_gzip_raises_data_error(tmp_path):
    """A valid gzip header followed by garbage, or a cut-off gzip stream, is a DataError saying so."""
    packed = gzip.compress(GOOD)
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(packed[:10] + b"\xff this is not deflate data \xff" * 4)
    assert_data_error(lambda: idx.read_idx(garbage), "corrupt gzip", str(garbage))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    assert_data_error(lambda: idx.read_idx(cut), "corrupt gzip", str(cut))


def test_directory_and_missing_file_raise_data_error(tmp_path):
    """A directory where a file should be, and a missing file, are DataErrors naming the path."""
    folder = tmp_path / "folder"
    folder.mkdir()
    assert_data_error(lambda: idx.read_idx(folder), "is a directory", str(folder))
    missing = tmp_path / "missing-idx"
    assert_data_error(lambda: idx.read_idx(missing), "cannot read", str(missing))


# ---------------------------------------------------------------- images_to_float, check_pair


def test_images_to_float_scales_and_flattens():
    """(n, 28, 28) uint8 → (n, 784) float32 equal to pixel / 255, row-major, spanning [0, 1]."""
    images = sample_images(4, seed=2)
    images[0, 0, 0], images[1, 27, 27], images[2, 3, 5] = 0, 255, 51
    out = data.images_to_float(images)
    assert out.dtype == np.float32
    assert out.shape == (4, 784)
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[2, 3 * 28 + 5] == np.float32(0.2)
    np.testing.assert_allclose(out, images.reshape(4, 784) / 255.0, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [(2, 28, 27), (2, 784), (28, 28), (1, 1, 28, 28)])
def test_images_to_float_rejects_wrong_shape(shape):
    """Anything but (n, 28, 28) is a DataError naming the shape it got."""
    assert_data_error(lambda: data.images_to_float(np.zeros(shape, np.uint8)), "28×28", str(shape))


def test_check_pair_accepts_matching_digits():
    """Equal counts and labels 0–9 pass."""
    data.check_pair(np.zeros((10, 784), np.float32), np.arange(10, dtype=np.uint8), "training")


def test_check_pair_rejects_mismatch_and_label_ten():
    """Different counts, 2-D labels and a label of 10 are DataErrors."""
    X = np.zeros((3, 784), np.float32)
    assert_data_error(lambda: data.check_pair(X, np.zeros(2, np.uint8), "training"), "training", "do not match")
    assert_data_error(lambda: data.check_pair(X, np.zeros((3, 1), np.uint8), "test"), "test", "do not match")
    labels = np.array([0, 10, 9], np.uint8)
    assert_data_error(lambda: data.check_pair(X, labels, "test"), "contain 10", "0–9")


def test_check_pair_rejects_negative_labels():
    """A signed labels file (type 0x09) holding -1 is not a digit and must be a DataError."""
    labels = idx.parse_idx(idx_of(np.array([0, -1, 9], np.int8)))
    assert_data_error(lambda: data.check_pair(np.zeros((3, 784), np.float32), labels, "test"), "0–9")


# ---------------------------------------------------------------- split


def test_split_matches_rust_project():
    """Train from the start, validation right after it, test from the start of the test file."""
    X_train, y_train = np.arange(10) * 10, np.arange(10) + 100
    X_test, y_test = np.arange(6) * 10 + 1000, np.arange(6) + 2000
    (xt, yt), (xv, yv), (xs, ys) = data.split(X_train, y_train, X_test, y_test, 4, 3, 2)
    assert xt.tolist() == [0, 10, 20, 30] and yt.tolist() == [100, 101, 102, 103]
    assert xv.tolist() == [40, 50, 60] and yv.tolist() == [104, 105, 106]
    assert xs.tolist() == [1000, 1010] and ys.tolist() == [2000, 2001]
    assert not set(xt.tolist()) & set(xv.tolist())


def test_split_may_use_every_image():
    """train + val equal to the training file and test equal to the test file are allowed."""
    X, y = np.arange(5), np.arange(5)
    (xt, _), (xv, _), (xs, _) = data.split(X, y, X, y, 3, 2, 5)
    assert xt.tolist() + xv.tolist() == [0, 1, 2, 3, 4]
    assert len(xs) == 5


def test_split_too_large_raises_config_error_naming_options():
    """train + val over the training images, or test over the test images, is a ConfigError naming the options."""
    X, y = np.arange(10), np.arange(10)
    with pytest.raises(ConfigError) as info:
        data.split(X, y, X, y, 8, 3, 1)
    assert "--train-size" in str(info.value) and "--val-size" in str(info.value)
    with pytest.raises(ConfigError, match="--test-size"):
        data.split(X, y, X, y, 1, 1, 11)


# ---------------------------------------------------------------- search order


def _make_dirs(tmp_path, monkeypatch):
    explicit, env, cache = tmp_path / "explicit", tmp_path / "env", tmp_path / "xdg-cache" / "gpumlp" / "mnist"
    for d in (explicit, env, cache):
        d.mkdir(parents=True)
    monkeypatch.setenv("GPUMLP_DATA_DIR", str(env))
    return explicit, env, cache


def test_search_dirs_is_the_named_folder_only(tmp_path, monkeypatch):
    """--data-dir, else $GPUMLP_DATA_DIR, else $XDG_CACHE_HOME/gpumlp/mnist (or ~/.cache): one folder,
    never a fall-back to the cache past a folder the user named."""
    explicit, env, cache = _make_dirs(tmp_path, monkeypatch)
    assert data.search_dirs(explicit) == [explicit]
    assert data.search_dirs(str(explicit)) == [explicit]
    assert data.search_dirs() == [env]
    monkeypatch.delenv("GPUMLP_DATA_DIR")
    assert data.search_dirs() == [cache]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.search_dirs() == [tmp_path / "home" / ".cache" / "gpumlp" / "mnist"]


def test_find_file_takes_first_dir_then_raw_before_gz(tmp_path, monkeypatch):
    """find_file returns the copy in the earliest folder; within a folder, ``name`` before ``name.gz``."""
    explicit, env, cache = _make_dirs(tmp_path, monkeypatch)
    dirs = [explicit, env, cache]
    assert data.find_file("f", dirs) is None
    (cache / "f.gz").write_bytes(b"")
    assert data.find_file("f", dirs) == cache / "f.gz"
    (env / "f.gz").write_bytes(b"")
    assert data.find_file("f", dirs) == env / "f.gz"
    (explicit / "f.gz").write_bytes(b"")
    assert data.find_file("f", dirs) == explicit / "f.gz"
    (explicit / "f").write_bytes(b"")
    assert data.find_file("f", dirs) == explicit / "f"


def test_locate_mnist_looks_only_in_the_named_folder(tmp_path, monkeypatch):
    """locate_mnist(download=False) takes every file from the named folder, never the cache's copy."""
    explicit, env, cache = _make_dirs(tmp_path, monkeypatch)
    files = {"a": "0" * 64, "b": "0" * 64}
    for d in (explicit, env, cache):
        (d / "a.gz").write_bytes(b"")
        (d / "b").write_bytes(b"")
    assert data.locate_mnist(explicit, download=False, files=files) == {"a": explicit / "a.gz", "b": explicit / "b"}
    assert data.locate_mnist(download=False, files=files) == {"a": env / "a.gz", "b": env / "b"}
    monkeypatch.delenv("GPUMLP_DATA_DIR")
    assert data.locate_mnist(download=False, files=files) == {"a": cache / "a.gz", "b": cache / "b"}


@pytest.mark.parametrize("named_by", ["--data-dir", "$GPUMLP_DATA_DIR"])
def test_a_named_folder_without_the_files_is_an_error_even_when_the_cache_has_them(tmp_path, monkeypatch, named_by):
    """Issue 15: a wrong --data-dir was silently passed over for the cache's copy (exit 0). Now the
    files missing there are named, with the folder, and the cache is not used."""
    explicit, env, cache = _make_dirs(tmp_path, monkeypatch)
    files = {"present": "0" * 64, "absent-one": "0" * 64, "absent-two": "0" * 64}
    for name in files:
        (cache / f"{name}.gz").write_bytes(b"")
    folder = explicit if named_by == "--data-dir" else env
    (folder / "present.gz").write_bytes(b"")
    message = assert_data_error(
        lambda: data.locate_mnist(
            explicit if named_by == "--data-dir" else None, download=False, files=files, mirrors=["http://127.0.0.1:9/"]
        ),
        "absent-one",
        "absent-two",
        named_by,
        str(folder),
    )
    assert "present," not in message and "present " not in message and str(cache) not in message
    # with downloads allowed and no mirror answering: the same, plus each mirror's failure and the fix
    message = assert_data_error(
        lambda: data.locate_mnist(
            explicit if named_by == "--data-dir" else None, files=files, mirrors=["http://127.0.0.1:9/"]
        ),
        "absent-one, absent-two;",
        "http://127.0.0.1:9/absent-one.gz",
        f"Put the MNIST files in {folder} yourself",
    )
    assert str(cache) not in message and sorted(os.listdir(folder)) == ["present.gz"]


def test_a_named_folder_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    """--data-dir or $GPUMLP_DATA_DIR naming a file: a DataError saying so, not a FileExistsError."""
    a_file = tmp_path / "mnist.gz"
    a_file.write_bytes(b"x")
    assert_data_error(lambda: data.locate_mnist(a_file, files={"f": "0" * 64}), "is a file, not a folder", str(a_file))
    monkeypatch.setenv("GPUMLP_DATA_DIR", str(a_file))
    assert_data_error(lambda: data.locate_mnist(files={"f": "0" * 64}), "$GPUMLP_DATA_DIR", "is a file")


# ---------------------------------------------------------------- downloads from a local server

NAME = "tiny-images-idx3-ubyte"
TINY = idx_of(sample_images(3, seed=7))
TINY_GZ = gzip.compress(TINY)
OTHER_GZ = gzip.compress(idx_of(sample_images(3, seed=8)))


def drop(body: bytes, declared: int):
    """Announce ``declared`` bytes, send ``body``, then close the connection."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(declared))
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()
        h.close_connection = True

    return route


def hang(after_headers: bool):
    """Stall (up to 10 s, or until the test ends) before the headers or after half the body."""

    def route(h: BaseHTTPRequestHandler) -> None:
        if after_headers:
            h.send_response(200)
            h.send_header("Content-Length", str(len(TINY_GZ)))
            h.end_headers()
            h.wfile.write(TINY_GZ[: len(TINY_GZ) // 2])
            h.wfile.flush()
        h.server.stop.wait(10)

    return route


def fail_first(times: int, failing, then):
    """``failing`` for the first ``times`` requests, ``then`` afterwards."""
    calls = [0]

    def route(h: BaseHTTPRequestHandler) -> None:
        calls[0] += 1
        (failing if calls[0] <= times else then)(h)

    return route


def dest_listing(dest: Path) -> list[str]:
    return sorted(os.listdir(dest)) if dest.exists() else []


def download(dest, mirrors, timeout=5.0, name=NAME):
    return fetching.download_file(name, sha256(TINY), dest, mirrors=mirrors, timeout=timeout, progress=False)


def assert_downloaded(path: Path, dest: Path):
    assert path == dest / f"{NAME}.gz"
    assert dest_listing(dest) == [f"{NAME}.gz"]  # nothing else, no .part files
    assert gzip.decompress(path.read_bytes()) == TINY
    np.testing.assert_array_equal(idx.read_idx(path), sample_images(3, seed=7))


def test_download_skips_404_and_refused_mirrors(server, refused_url, tmp_path):
    """A mirror that answers 404 and one that refuses connections are skipped; the next one is used."""
    server.routes[f"/good/{NAME}.gz"] = serve(TINY_GZ)
    dest = tmp_path / "dest"
    path = download(dest, [refused_url, f"{server.url}/missing/", f"{server.url}/good/"])
    assert_downloaded(path, dest)
    assert server.requests == [f"/missing/{NAME}.gz", f"/good/{NAME}.gz"]


def test_download_stops_a_mirror_serving_more_than_the_file_can_be(server, tmp_path, monkeypatch):
    """A body larger than the real file plus 1 MiB is cut off and that mirror skipped; a body that
    inflates past the real size is refused while it is decompressed, never inflated whole."""
    monkeypatch.setitem(IDX_SIZES, NAME, len(TINY))
    server.routes[f"/endless/{NAME}.gz"] = serve(os.urandom(len(TINY) + (1 << 20) + 1))
    server.routes[f"/bomb/{NAME}.gz"] = serve(gzip.compress(TINY + bytes(1 << 20)))
    server.routes[f"/good/{NAME}.gz"] = serve(TINY_GZ)
    dest = tmp_path / "dest"
    assert_downloaded(download(dest, [f"{server.url}/endless/", f"{server.url}/bomb/", f"{server.url}/good/"]), dest)
    message = assert_data_error(lambda: download(tmp_path / "o", [f"{server.url}/endless/", f"{server.url}/bomb/"]))
    assert "served more than" in message and "decompresses to more than the real" in message
    assert dest_listing(tmp_path / "o") == []


def test_download_rejects_wrong_checksum(server, tmp_path):
    """A mirror serving other content is rejected by SHA-256; alone, it is a DataError saying so."""
    server.routes[f"/wrong/{NAME}.gz"] = serve(OTHER_GZ)
    server.routes[f"/good/{NAME}.gz"] = serve(TINY_GZ)
    dest = tmp_path / "dest"
    assert_downloaded(download(dest, [f"{server.url}/wrong/", f"{server.url}/good/"]), dest)
    assert server.requests == [f"/wrong/{NAME}.gz", f"/good/{NAME}.gz"]

    other = tmp_path / "other"
    assert_data_error(lambda: download(other, [f"{server.url}/wrong/"]), "checksum mismatch", NAME)
    assert dest_listing(other) == []


@pytest.mark.parametrize(
    "body", [TINY_GZ[: len(TINY_GZ) // 2], TINY_GZ], ids=["half-body", "whole-body-short-of-declared"]
)
def test_download_dropped_mid_file_leaves_nothing(server, tmp_path, body):
    """A connection closed before Content-Length bytes is a failure, leaving no file and no .part."""
    server.routes[f"/drop/{NAME}.gz"] = drop(body, len(TINY_GZ) + 1000)
    dest = tmp_path / "dest"
    assert_data_error(lambda: download(dest, [f"{server.url}/drop/"]), "connection closed", NAME)
    assert dest_listing(dest) == []

    server.routes[f"/good/{NAME}.gz"] = serve(TINY_GZ)
    assert_downloaded(download(dest, [f"{server.url}/drop/", f"{server.url}/good/"]), dest)


def test_download_all_mirrors_down_names_everything(server, refused_url, tmp_path):
    """With every mirror failing, one line names the file, each URL tried and --data-dir."""
    mirrors = [refused_url, f"{server.url}/a/", f"{server.url}/b"]
    dest = tmp_path / "dest"
    message = assert_data_error(lambda: download(dest, mirrors), NAME, "--data-dir")
    assert "\n" not in message
    for url in (f"{refused_url}{NAME}.gz", f"{server.url}/a/{NAME}.gz", f"{server.url}/b/{NAME}.gz"):
        assert url in message
    assert dest_listing(dest) == []


@pytest.mark.parametrize("after_headers", [False, True], ids=["before-headers", "mid-body"])
def test_download_hanging_mirror_times_out(server, tmp_path, after_headers):
    """A mirror that stalls is given up after ``timeout`` seconds without progress; the next one is used."""
    server.routes[f"/hang/{NAME}.gz"] = hang(after_headers)
    server.routes[f"/good/{NAME}.gz"] = serve(TINY_GZ)
    dest = tmp_path / "dest"
    start = time.perf_counter()
    path = download(dest, [f"{server.url}/hang/", f"{server.url}/good/"], timeout=0.5)
    assert time.perf_counter() - start < 5.0
    assert_downloaded(path, dest)
    assert server.requests == [f"/hang/{NAME}.gz", f"/good/{NAME}.gz"]


def test_download_retry_after_failure_succeeds(server, tmp_path):
    """After a failed download, calling again with the same mirror, now healthy, succeeds cleanly."""
    server.routes[f"/flaky/{NAME}.gz"] = fail_first(1, drop(TINY_GZ[:100], len(TINY_GZ)), serve(TINY_GZ))
    dest = tmp_path / "dest"
    assert_data_error(lambda: download(dest, [f"{server.url}/flaky/"]), NAME)
    assert dest_listing(dest) == []
    assert_downloaded(download(dest, [f"{server.url}/flaky/"]), dest)
    assert server.requests == [f"/flaky/{NAME}.gz"] * 2


def test_download_replaces_stale_file(server, tmp_path):
    """A verified download replaces whatever was under the real name."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / f"{NAME}.gz").write_bytes(b"stale")
    server.routes[f"/good/{NAME}.gz"] = serve(TINY_GZ)
    assert_downloaded(download(dest, [f"{server.url}/good/"]), dest)


def test_locate_mnist_downloads_missing_then_reuses(server, tmp_path, monkeypatch):
    """locate_mnist downloads only the missing files into --data-dir (made if need be), then finds them
    with no requests."""
    other_raw = idx_of(sample_labels(7))
    files = {NAME: sha256(TINY), "tiny-labels": sha256(other_raw)}
    server.routes[f"/m/{NAME}.gz"] = serve(TINY_GZ)
    server.routes["/m/tiny-labels.gz"] = serve(gzip.compress(other_raw))
    data_dir = tmp_path / "data"
    mirrors = [f"{server.url}/nothing/", f"{server.url}/m/"]

    found = data.locate_mnist(data_dir=data_dir, mirrors=mirrors, files=files)
    expected = {NAME: data_dir / f"{NAME}.gz", "tiny-labels": data_dir / "tiny-labels.gz"}
    assert found == expected
    assert sorted(server.requests) == sorted(f"{m}{n}.gz" for m in ("/nothing/", "/m/") for n in (NAME, "tiny-labels"))
    assert idx.read_idx(found["tiny-labels"]).tolist() == sample_labels(7).tolist()
    assert sorted(os.listdir(data_dir)) == sorted(["tiny-labels.gz", f"{NAME}.gz"])

    server.requests.clear()
    assert data.locate_mnist(data_dir=data_dir, mirrors=mirrors, files=files) == expected
    assert server.requests == []


def test_locate_mnist_download_failure_is_data_error(server, tmp_path):
    """locate_mnist passes a download failure on as a DataError naming the file and --data-dir."""
    files = {NAME: sha256(TINY)}
    assert_data_error(
        lambda: data.locate_mnist(data_dir=tmp_path / "d", mirrors=[f"{server.url}/x/"], files=files),
        NAME,
        f"{server.url}/x/{NAME}.gz",
        "--data-dir",
    )


def _chunked_then_drop(h: BaseHTTPRequestHandler) -> None:
    h.protocol_version = "HTTP/1.1"
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    h.send_header("Connection", "close")
    h.end_headers()
    part = TINY_GZ[:100]
    h.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
    h.wfile.flush()
    h.close_connection = True


def _garbage_status_line(h: BaseHTTPRequestHandler) -> None:
    h.wfile.write(b"this is not HTTP\r\n\r\n")
    h.close_connection = True


@pytest.mark.parametrize("route", [_chunked_then_drop, _garbage_status_line], ids=["chunked-drop", "bad-status"])
def test_download_protocol_errors_fall_through_to_next_mirror(server, tmp_path, route):
    """A chunked response cut short, or a reply that is not HTTP, is a mirror failure like any other."""
    server.routes[f"/broken/{NAME}.gz"] = route
    server.routes[f"/good/{NAME}.gz"] = serve(TINY_GZ)
    dest = tmp_path / "dest"
    assert_downloaded(download(dest, [f"{server.url}/broken/", f"{server.url}/good/"]), dest)


# ---------------------------------------------------------------- real MNIST


@pytest.fixture
def real_dir(mnist_dir) -> str:
    """The real MNIST folder, found by conftest.py the way gpumlp finds it."""
    return str(mnist_dir)


def test_load_mnist_real(monkeypatch, real_dir):
    """The real files load verified: shapes, float32 in [0, 1], uint8 labels, the known digit counts."""
    monkeypatch.setenv("GPUMLP_DATA_DIR", real_dir)
    X_train, y_train, X_test, y_test = data.load_mnist(download=False)
    assert X_train.shape == (60000, 784) and y_train.shape == (60000,)
    assert X_test.shape == (10000, 784) and y_test.shape == (10000,)
    for X in (X_train, X_test):
        assert X.dtype == np.float32
        assert X.min() == 0.0 and X.max() == 1.0
    assert y_train.dtype == np.uint8 and y_test.dtype == np.uint8
    assert np.bincount(y_train, minlength=10).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(y_test, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_load_mnist_rejects_modified_file(tmp_path, real_dir):
    """One changed byte in an otherwise valid MNIST file is a DataError pointing at sha256 and deletion."""
    source = Path(real_dir)
    folder = tmp_path / "mnist"
    folder.mkdir()
    victim = "t10k-labels-idx1-ubyte"
    for name in MNIST.files:
        if name != victim:
            found = data.find_file(name, [source])
            assert found is not None, f"{name} missing from {source}"
            (folder / found.name).symlink_to(found)
    raw = bytearray(idx._read_bytes(data.find_file(victim, [source])))
    raw[-1] = (raw[-1] + 1) % 10  # still a valid digit, so only the checksum can notice
    (folder / f"{victim}.gz").write_bytes(gzip.compress(bytes(raw)))
    message = assert_data_error(lambda: data.load_mnist(folder, download=False), "sha256", "delete", victim)
    assert str(folder) in message


def test_download_refuses_plain_http_to_other_hosts(tmp_path):
    """Downloads are HTTPS only (plain HTTP is allowed to 127.0.0.1 for these tests)."""
    files = {NAME: hashlib.sha256(b"x").hexdigest()}
    with pytest.raises(data.DataError, match="refused .only https"):
        fetching.download_file(NAME, files[NAME], tmp_path / "d", mirrors=["http://example.com/mnist/"], progress=False)
    assert not (tmp_path / "d").exists()  # a failed download leaves no empty folder


def test_decoded_cache_is_used_only_while_the_sources_are_unchanged(tmp_path, real_dir, monkeypatch):
    """After a first verified load, later loads read the decoded cache (no decompression, no
    SHA-256); touching a source file makes gpumlp verify and decode it again."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in MNIST.files:
        found = data.find_file(name, [Path(real_dir)])
        (folder / found.name).write_bytes(found.read_bytes())
    first = data.load_mnist(folder, download=False)
    cache = data.decoded_cache_path(data.locate_mnist(folder, download=False))
    assert cache.is_file() and cache.parent == tmp_path / "xdg-cache" / "gpumlp" / "decoded"
    verified = []
    real_verify = data._load_verified
    monkeypatch.setattr(data, "_load_verified", lambda p, *a: verified.append(p) or real_verify(p, *a))
    second = data.load_mnist(folder, download=False)
    assert verified == [] and all(np.array_equal(a, b) for a, b in zip(first, second))
    labels = next(folder.glob("t10k-labels*"))
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    data.load_mnist(folder, download=False)
    assert len(verified) == 4  # a changed stamp: all four verified again, then cached anew
