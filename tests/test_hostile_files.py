"""The hostile corpus: every kind of file a user can hand gpumlp, crafted to hurt it (issue 16).

Each case builds its files small, in a temporary folder, and runs the real command in a fresh
process whose address space is capped with ``RLIMIT_AS`` (so peak memory is measured, not
assumed: a process over the cap gets MemoryError or dies, which fails the case) and whose wall
time is capped (so a hang fails the case). Every case must end with exit code 2, one line on
stderr starting ``error:``, no traceback, and no file left behind.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from gpumlp.formats import checkpoint
from gpumlp.model import MLP

resource = pytest.importorskip("resource", reason="RLIMIT_AS and FIFOs are POSIX")

GIB = 1 << 30
MEMORY_CAP = GIB  # address space, so resident memory stays below it too: the target is < 1 GB peak RSS
TIME_CAP = 120  # seconds; a hang on a FIFO would wait forever


# ---------------------------------------------------------------- running a command under caps


def run_capped(args, cwd: Path, cap: int = MEMORY_CAP, env: dict | None = None):
    """``gpumlp *args`` in a fresh process with ``cap`` bytes of address space: ``(rc, stdout, stderr)``."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    base = {k: v for k, v in os.environ.items() if k != "GPUMLP_DATA_DIR"}
    # One BLAS thread: each extra thread reserves address space, which would make the cap depend
    # on the machine's core count rather than on what gpumlp allocates.
    base.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HOME=str(cwd / "home"))
    base.update(XDG_CACHE_HOME=str(cwd / "home" / "cache"), GPUMLP_BLAS="numpy", **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "gpumlp", *map(str, args)],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=TIME_CAP,
        preexec_fn=limit,
    )
    return proc.returncode, proc.stdout, proc.stderr


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "home" not in p.relative_to(folder).parts}


def assert_one_line_error(rc: int, err: str, *fragments: str) -> None:
    assert "Traceback" not in err and "MemoryError" not in err, err[-3000:]
    assert rc == 2, (rc, err[-3000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ---------------------------------------------------------------- crafting files


def deflate_zeros(prefix: bytes, n_zeros: int) -> bytes:
    """A raw deflate stream of ``prefix`` then ``n_zeros`` zero bytes, made in a fraction of a
    second: after a full flush each 16 MiB of zeros compresses to the same 16 KB block."""
    chunk = 1 << 24
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    n, rest = divmod(n_zeros, chunk)
    assert n >= 1 and block == c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    return head + block * n + c.compress(bytes(rest)) + c.flush()


def gzip_zeros(prefix: bytes, n_zeros: int) -> bytes:
    """A gzip file of ``prefix`` then ``n_zeros`` zeros (its CRC is left 0: the whole point is that
    nothing should get as far as checking it)."""
    body = deflate_zeros(prefix, n_zeros)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + struct.pack("<II", 0, (len(prefix) + n_zeros) % 2**32)


def write_zip(path: Path, members) -> Path:
    """A zip written byte by byte: ``members`` are ``(name, packed bytes, method, flags, unpacked
    size[, crc of a deflated member])``, so directories can declare what zipfile would never write."""
    out, central, holes = bytearray(), bytearray(), []
    for name, packed, method, flags, size, *crc in members:
        n = name.encode()
        crc = crc[0] if crc and crc[0] is not None else zlib.crc32(packed)
        offset = len(out)
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0, crc, len(packed), size, len(n), 0)
        out += local + n + packed
        if isinstance(packed, _Hole):  # its zeros: left as a hole, written by seeking past them
            holes.append((len(out), packed.hole))
        central += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                *(0x02014B50, 20, 20, flags, method, 0, 0, crc, len(packed), size, len(n), 0, 0, 0, 0, 0, offset),
            )
            + n
        )
    offset = len(out) + sum(n for _, n in holes)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), offset, 0)
    with open(path, "wb") as f:
        start = 0
        for at, n in holes:
            f.write(out[start:at])
            f.seek(n, os.SEEK_CUR)
            start = at
        f.write(out[start:] + central + end)
    return path


def npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    return buf.getvalue()


def npy_header(shape, descr="<f4") -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


META = {"format": "gpumlp-checkpoint", "version": 1, "sizes": [784, 10], "activation": "sigmoid", "loss": "mse",
        "init": "xavier", "dtype": "float32", "input_divisor": 255.0}  # fmt: skip


def good_json(tmp: Path) -> dict:
    """A valid small JSON checkpoint's document, to spoil one field at a time."""
    path = checkpoint.save(tmp / "good-source.json", MLP((784, 10), seed=3))
    doc = json.loads(path.read_text())
    path.unlink()
    return doc


def spoiled_json(tmp: Path, name="bad.json", text: str | None = None, **changes) -> Path:
    doc = good_json(tmp)
    doc.update(changes)
    (tmp / name).write_text(text if text is not None else json.dumps(doc))
    return tmp / name


def good_npz(tmp: Path) -> Path:
    return checkpoint.save(tmp / "good.npz", MLP((784, 10), seed=3))


def mnist_folder(tmp: Path, victim: str, content) -> Path:
    """A data folder with the four MNIST names, ``victim`` made by ``content(path)``, the others
    small stand-ins (the victim is read first or the case fails on the stand-ins, which is
    also one line)."""
    folder = tmp / "data"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):  # fmt: skip
        if name != victim.removesuffix(".gz"):
            (folder / name).write_bytes(b"\0\0\x08\x01\0\0\0\0")
    content(folder / victim)
    return folder


# ---------------------------------------------------------------- memory: amplification before validation


def _json_huge_sizes(tmp):
    (tmp / "huge.json").write_text(json.dumps(dict(META, sizes=[784, 500000, 10], params={})))
    assert (tmp / "huge.json").stat().st_size < 200
    return ["info", "huge.json"], "do not match the layers"


def _json_huge_sizes_empty_arrays(tmp):
    params = {"W0": [], "b0": [], "W1": [], "b1": []}
    (tmp / "huge.json").write_text(json.dumps(dict(META, sizes=[784, 500000, 10], params=params)))
    return ["convert", "huge.json", "out.npz"], "W0 has shape (0,), the layers need (784, 500000)"


def _json_huge_sizes_resume(tmp):
    (tmp / "huge.json").write_text(json.dumps(dict(META, sizes=[784, 3000000, 10], params={})))
    return ["train", "--resume", "huge.json", "--epochs", "2"], "at most 1024 layers of 1,048,576"


def _npz_total_over_cap(tmp):
    # Two members of 600 MB of zeros, 0.6 MB each packed: each under the old per-member cap of
    # 2 GB, together 1.2 GB, read whole before the metadata was looked at.
    header = npy_header((150_000_000,))
    crc = zlib.crc32(header)
    for _ in range(600_000_000 // (1 << 24)):
        crc = zlib.crc32(bytes(1 << 24), crc)
    crc = zlib.crc32(bytes(600_000_000 % (1 << 24)), crc)  # right, so only the size can stop a reader
    packed = deflate_zeros(header, 600_000_000)
    bomb = [(f"state.{k}.npy", packed, 8, 0, len(header) + 600_000_000, crc) for k in ("m", "v")]
    meta = npy_bytes(np.frombuffer(json.dumps(META).encode(), np.uint8))
    good = [("metadata.npy", meta, 0, 0, len(meta))]
    for key, arr in {"W0": np.zeros((784, 10), np.float32), "b0": np.zeros(10, np.float32)}.items():
        raw = npy_bytes(arr)
        good.append((f"{key}.npy", raw, 0, 0, len(raw)))
    write_zip(tmp / "bomb.npz", bomb + good)
    assert (tmp / "bomb.npz").stat().st_size < 2_000_000
    return ["info", "bomb.npz"], "refused as a zip bomb"


def _npz_metadata_declares_huge(tmp):
    meta = npy_bytes(np.frombuffer(json.dumps(dict(META, sizes=[784, 500000, 10])).encode(), np.uint8))
    write_zip(tmp / "m.npz", [("metadata.npy", meta, 0, 0, len(meta))])
    return ["predict", "m.npz", "--index", "0"], "do not match the layers"


def _json_of_empty_objects(tmp):
    # 10 MB of "{}," parse into 3.3 million dicts (~250 MB); refused by counting before parsing.
    # Measured: 301 MB resident before, 56 MB now; the cap for this case is 256 MiB of address space.
    (tmp / "lists.json").write_bytes(b"[" + b"{}," * 3_300_000 + b"{}]")
    return ["info", "lists.json"], "JSON lists and objects", 256 << 20


def _json_sparse(tmp):
    # 900 MB by stat, under the 1 GiB JSON cap, nothing on disk: refused by its allocated size (and,
    # under 64 MiB, at its first NUL byte: tests/test_untrusted.py).
    with open(tmp / "sparse.json", "wb") as f:
        f.write(b'{"format": "gpumlp-checkpoint", "params": {"W0": [')
        f.truncate(900_000_000)
    return ["info", "sparse.json"], "is a sparse file (900,000,000 bytes"


def _npz_sparse(tmp):
    # A stored W0 of 784×100,000 zeros (314 MB) that is a hole in the file: consistent with its
    # metadata, with a right CRC, so only the file's allocated size tells it from a real network.
    sizes = [784, 100_000, 10]
    meta = npy_bytes(np.frombuffer(json.dumps(dict(META, sizes=sizes)).encode(), np.uint8))
    header = npy_header((784, 100_000))
    n_zeros = 784 * 100_000 * 4
    crc = zlib.crc32(header)
    for _ in range(n_zeros // (1 << 24)):
        crc = zlib.crc32(bytes(1 << 24), crc)
    crc = zlib.crc32(bytes(n_zeros % (1 << 24)), crc)
    small = {"b0": np.zeros(100_000, np.float32), "W1": np.zeros((100_000, 10), np.float32),
             "b1": np.zeros(10, np.float32)}  # fmt: skip
    members = [("metadata.npy", meta, 0, 0, len(meta), None)]
    members += [(f"{k}.npy", npy_bytes(v), 0, 0, len(npy_bytes(v)), None) for k, v in small.items()]
    members.append(("W0.npy", _Hole(header, n_zeros), 0, 0, len(header) + n_zeros, crc))
    write_zip(tmp / "sparse.npz", members)
    return ["info", "sparse.npz"], "is a sparse file"


class _Hole(bytes):
    """Packed bytes ``header`` followed by ``n`` zeros that ``write_zip`` leaves as a hole."""

    def __new__(cls, header: bytes, n: int):
        obj = super().__new__(cls, header)
        obj.hole = n
        return obj

    def __len__(self):
        return super().__len__() + self.hole


def _mnist_gzip_bomb(tmp):
    # 1.6 MB of gzip that inflates to 1.6 GB: gunzipped whole before the SHA-256 check, once.
    header = struct.pack(">HBBIII", 0, 8, 3, 2_000_000, 28, 28)
    folder = mnist_folder(
        tmp, "train-images-idx3-ubyte", lambda p: p.with_suffix(".gz").write_bytes(gzip_zeros(header, 1_600_000_000))
    )
    return ["test", good_npz(tmp).name, "--data-dir", folder], "decompresses to more than the 47,040,016 bytes"


def _mnist_sparse_raw(tmp):
    def sparse(path):
        with open(path, "wb") as f:
            f.write(struct.pack(">HBBIII", 0, 8, 3, 3_000_000, 28, 28))
            f.truncate(3 * GIB)  # a hole: no disk, 3 GB by stat

    folder = mnist_folder(tmp, "train-images-idx3-ubyte", sparse)
    return ["test", good_npz(tmp).name, "--data-dir", folder], "is 3,221,225,472 bytes, more than the 47,040,016"


def _png_12000(tmp):
    Image = pytest.importorskip("PIL.Image")
    im = Image.new("L", (12_000, 12_000), 255)
    im.paste(0, (5000, 5000, 7000, 7000))
    im.save(tmp / "big.png", optimize=False, compress_level=9)
    del im
    assert (tmp / "big.png").stat().st_size < 1_000_000
    return ["predict", good_npz(tmp).name, "big.png"], "12000×12000 pixels"


MEMORY_CASES = {
    "json-declares-784-500000-10-without-params": _json_huge_sizes,
    "json-declares-784-500000-10-with-empty-arrays": _json_huge_sizes_empty_arrays,
    "json-declares-3-million-units-on-resume": _json_huge_sizes_resume,
    "npz-members-each-under-cap-total-1.2GB": _npz_total_over_cap,
    "npz-metadata-declares-784-500000-10": _npz_metadata_declares_huge,
    "json-of-3.3-million-empty-objects": _json_of_empty_objects,
    "json-sparse-900MB": _json_sparse,
    "npz-sparse-314MB-of-zeros-consistent-with-metadata": _npz_sparse,
    "mnist-gzip-inflating-to-1.6GB": _mnist_gzip_bomb,
    "mnist-sparse-3GB-raw-file": _mnist_sparse_raw,
    "png-12000x12000-under-1MB": _png_12000,
}


@pytest.mark.parametrize("case", MEMORY_CASES)
def test_no_crafted_file_costs_a_gigabyte(tmp_path, case):
    """Each file is under 10 MB (most under 2 MB) and was worth 1–7 GB before the checks moved in
    front of the allocations; now each is refused under a 1 GiB address-space cap."""
    args, fragment, *cap = MEMORY_CASES[case](tmp_path)
    for p in tmp_path.iterdir():
        assert p.is_dir() or p.stat().st_blocks * 512 < 10_000_000, p
    before = files_under(tmp_path)
    rc, _, err = run_capped(args, tmp_path, *cap)
    assert_one_line_error(rc, err, fragment)
    assert files_under(tmp_path) == before


def test_the_memory_cap_lets_normal_work_through(tmp_path, mnist_dir):
    """The control: under the same cap, a real checkpoint is described, converted and tested on the
    real MNIST test set, and a real image predicted; so the cases above fail for their files."""
    model = MLP((784, 64, 10), "relu", "ce", seed=1)
    checkpoint.save(tmp_path / "m.json", model)
    for args in (["info", "m.json"], ["convert", "m.json", "m.npz"],
                 ["test", "m.npz", "--data-dir", mnist_dir.resolve(), "--test-size", "10000"]):  # fmt: skip
        rc, out, err = run_capped(args, tmp_path)
        assert rc == 0, err[-2000:]
    Image = pytest.importorskip("PIL.Image")
    im = Image.new("L", (4096, 4096), 255)  # the largest image gpumlp reads
    im.paste(0, (1500, 1000, 2600, 3000))
    im.save(tmp_path / "four-k.png")
    rc, out, err = run_capped(["predict", "m.npz", "four-k.png"], tmp_path)
    assert rc == 0, err[-2000:]


# ---------------------------------------------------------------- hangs: anything but a regular file


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


HANG_CASES = {
    "checkpoint-npz-is-a-fifo": lambda t: (["info", _fifo(t / "net.npz").name], "is a FIFO"),
    "checkpoint-without-suffix-is-a-fifo": lambda t: (["info", _fifo(t / "net").name], "is a FIFO"),
    "resume-checkpoint-is-a-fifo": lambda t: (["train", "--resume", _fifo(t / "r.json").name], "is a FIFO"),
    "image-is-a-fifo": lambda t: (["predict", good_npz(t).name, _fifo(t / "digit.png").name], "is a FIFO"),
    "mnist-file-is-a-fifo": lambda t: (
        ["test", good_npz(t).name, "--data-dir", mnist_folder(t, "train-images-idx3-ubyte", _fifo)],
        "is a FIFO",
    ),
    "mnist-gz-is-a-fifo": lambda t: (
        ["test", good_npz(t).name, "--data-dir", mnist_folder(t, "train-images-idx3-ubyte.gz", _fifo)],
        "is a FIFO",
    ),
    "checkpoint-is-a-device": lambda t: (["info", "/dev/zero"], "is a device"),
    "checkpoint-is-a-directory": lambda t: ((t / "d.npz").mkdir() or ["info", "d.npz"], "is a directory"),
}


@pytest.mark.parametrize("case", HANG_CASES)
def test_non_regular_files_are_refused_not_waited_on(tmp_path, case):
    args, fragment = HANG_CASES[case](tmp_path)
    before = files_under(tmp_path)
    rc, _, err = run_capped(args, tmp_path)
    assert_one_line_error(rc, err, fragment)
    assert files_under(tmp_path) == before


# ---------------------------------------------------------------- malformed checkpoint fields: one line


def _digits(n: int) -> int:
    return int("9" * n)


def _npz_patched(tmp: Path, method: int | None = None, flags: int | None = None) -> Path:
    """A real checkpoint whose W0 member claims another compression method, or encryption, in
    both its local header and the central directory."""
    path = good_npz(tmp)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        local = zf.getinfo("W0.npy").header_offset
    central = raw.find(b"PK\x01\x02")
    while raw[central + 46 : central + 52] != b"W0.npy":
        central = raw.find(b"PK\x01\x02", central + 4)
    for flag_at in (local + 6, central + 8):  # the method follows the flags in both headers
        if flags is not None:
            raw[flag_at : flag_at + 2] = struct.pack("<H", flags)
        if method is not None:
            raw[flag_at + 2 : flag_at + 4] = struct.pack("<H", method)
    path.write_bytes(bytes(raw))
    return path


FIELD_CASES = {
    "sizes-a-string": (dict(sizes="784,10"), "'sizes' must be a list of integers"),
    "sizes-784-10.9": (dict(sizes=[784, 10.9]), "'sizes' must be a list of integers, got [784, 10.9]"),
    "sizes-with-true": (dict(sizes=[784, True, 10]), "must be a list of integers"),
    "sizes-400-digits": (dict(sizes=[784, _digits(400), 10]), "at most 1024 layers"),
    "sizes-5000-layers": (dict(sizes=[784] + [1] * 5000 + [10]), "declares 5002 layers"),
    "version-true": (dict(version=True), "checkpoint version True"),
    "version-a-string": (dict(version="1"), "checkpoint version '1'"),
    "activation-a-number": (dict(activation=5), "activation must be one of sigmoid"),
    "dtype-float16": (dict(dtype="float16"), "dtype must be one of float32, float64"),
    "init-unknown": (dict(init="zeros"), "init must be one of"),
    "input-divisor-a-string": (dict(input_divisor="255"), "input_divisor must be a positive number"),
    "input-divisor-a-list": (dict(input_divisor=[255]), "input_divisor must be a positive number"),
    "input-divisor-0": (dict(input_divisor=0), "input_divisor must be a positive number"),
    "input-divisor-minus-1": (dict(input_divisor=-1), "input_divisor must be a positive number"),
    "input-divisor-400-digits": (dict(input_divisor=_digits(400)), "input_divisor must be a positive number"),
    "input-divisor-NaN": (dict(input_divisor=float("nan")), "input_divisor must be a positive number, e.g. 255"),
    "input-divisor-inf": (dict(input_divisor=float("inf")), "input_divisor must be a positive number, e.g. 255"),
    "config-sizes-disagree": (dict(config={"sizes": [784, 30, 10]}), "config.sizes [784, 30, 10] disagrees"),
    "config-loss-disagrees": (dict(config={"loss": "ce"}), "config.loss 'ce' disagrees with the network's loss"),
    "history-a-string": (dict(history="abc"), "history must be a list of epochs"),
    "history-accuracy-a-string": (
        dict(history=[{"epoch": 1, "train_loss": 0.1, "val_accuracy": "x"}]),
        "history[0].val_accuracy",
    ),
    "history-epoch-a-float": (
        dict(history=[{"epoch": 1.5, "train_loss": 0.1}]),
        "history[0].epoch must be an epoch number",
    ),
    "history-without-loss": (dict(history=[{"epoch": 1}]), "history[0] lacks 'train_loss'"),
    "history-loss-null": (dict(history=[{"epoch": 1, "train_loss": None}]), "history[0].train_loss must be a number"),
    "config-a-list": (dict(config=[1]), "config must be an object"),
    "versions-a-list": (dict(versions=["gpumlp"]), "versions must be an object of version strings"),
    "versions-numbers": (dict(versions={"numpy": 2}), "versions must be an object of version strings"),
    "test-accuracy-a-string": (dict(test_accuracy="0.9"), "test_accuracy must be a fraction"),
    "test-accuracy-above-1": (dict(test_accuracy=97.5), "test_accuracy must be a fraction"),
    "test-size-negative": (dict(test_size=-1), "test_size must be a count"),
    "rng-state-garbage": (dict(train_state={"epochs_done": 1, "rng_state": {"x": 1}}), "train_state.rng_state"),
    "rng-state-400-digits": (
        dict(
            train_state={
                "epochs_done": 1,
                "rng_state": {
                    "bit_generator": "PCG64",
                    "has_uint32": 0,
                    "uinteger": 0,
                    "state": {"state": _digits(400), "inc": 1},
                },
            }
        ),  # fmt: skip
        "train_state.rng_state",
    ),
    "epochs-done-negative": (dict(train_state={"epochs_done": -1}), "train_state.epochs_done"),
    "optimizer-step-a-string": (dict(optimizer={"name": "adam", "t": "7"}), "optimizer.t"),
    "params-400-digit-integer": ("params", "integer too large for a float"),
    "state-400-digit-integer": ("state", "integer too large for a float"),
    "params-1e400": ("inf", "contains NaN or Inf"),
    "params-ragged": ("ragged", "W0 is not an array of numbers"),
    "state-arrays-a-list": (dict(state_arrays=[1, 2]), "state_arrays is not an object of arrays"),
}


def _field_case(tmp: Path, case: str) -> Path:
    change, _ = FIELD_CASES[case]
    if isinstance(change, dict):
        return spoiled_json(tmp, **change)
    doc = good_json(tmp)
    if change == "params":
        doc["params"]["b0"][3] = _digits(400)
    elif change == "state":
        doc["state_arrays"] = {"optimizer.m": [0.0] * 7849 + [_digits(400)]}
    elif change == "ragged":
        doc["params"]["W0"][5] = doc["params"]["W0"][5][:3]
    elif change == "inf":
        doc["params"]["b0"] = doc["params"]["b0"][1:]
        text = json.dumps(doc).replace('"b0": [', '"b0": [1e400, ', 1)  # json reads 1e400 as inf
        return spoiled_json(tmp, text=text)
    return spoiled_json(tmp, text=json.dumps(doc))


@pytest.mark.parametrize("case", FIELD_CASES)
def test_a_malformed_checkpoint_field_is_one_line(tmp_path, case, monkeypatch, capsys):
    """Every field refused by name; in-process through the real entry point (fast), on the two
    commands that read a checkpoint differently: info (all metadata) and --resume (read_metadata)."""
    from gpumlp.cli import commands as cli

    path = _field_case(tmp_path, case)
    fragment = FIELD_CASES[case][1]
    for args in (
        ["info", str(path)],
        ["train", "--resume", str(path), "--epochs", "99", "--save", str(tmp_path / "o.npz")],
    ):
        monkeypatch.setattr(sys, "argv", ["gpumlp", *args])
        with pytest.raises(SystemExit) as e:
            cli.main()
        err = capsys.readouterr().err
        assert_one_line_error(e.value.code, err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


NPZ_CASES = {
    "member-encrypted": (dict(flags=1), "is encrypted"),
    "member-method-99": (dict(method=99), "compression method 99"),
    "member-method-bzip2": (dict(method=12), "compression method 12"),
}


@pytest.mark.parametrize("case", NPZ_CASES)
def test_a_zip_member_numpy_never_writes_is_one_line(tmp_path, case):
    change, fragment = NPZ_CASES[case]
    path = _npz_patched(tmp_path, **change)
    with zipfile.ZipFile(path) as zf:  # the patch took: zipfile sees what the case says
        info = zf.getinfo("W0.npy")
        assert (info.flag_bits & 1, info.compress_type) == (change.get("flags", 0), change.get("method", 0))
    before = files_under(tmp_path)
    rc, _, err = run_capped(["convert", path.name, "out.json"], tmp_path)
    assert_one_line_error(rc, err, fragment)
    assert files_under(tmp_path) == before


# ---------------------------------------------------------------- data folders


def test_data_dir_naming_a_file_is_one_line(tmp_path):
    good_npz(tmp_path)
    (tmp_path / "mnist.gz").write_bytes(b"x")
    before = files_under(tmp_path)
    rc, _, err = run_capped(["test", "good.npz", "--data-dir", "mnist.gz"], tmp_path)
    assert_one_line_error(rc, err, "--data-dir mnist.gz is a file, not a folder")
    rc, _, err = run_capped(["test", "good.npz"], tmp_path, env={"GPUMLP_DATA_DIR": "mnist.gz"})
    assert_one_line_error(rc, err, "$GPUMLP_DATA_DIR mnist.gz is a file, not a folder")
    rc, _, err = run_capped(["test", "good.npz", "--data-dir", "mnist.gz/sub"], tmp_path)
    assert_one_line_error(rc, err, "cannot download", "mnist.gz/sub")
    assert files_under(tmp_path) == before


def test_an_unwritable_data_folder_is_one_line(tmp_path, monkeypatch):
    """Writing a verified download failing in the download folder (read-only, full, no permission)
    is a DataError naming the file and the folder, not an OSError traceback, and leaves nothing."""
    import gzip
    import hashlib

    from gpumlp.data import download, load
    from gpumlp.errors import DataError
    from gpumlp.formats import atomic

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(download, "fetch", lambda *args: gzip.compress(b"digits"))  # the right content
    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(DataError, match=f"cannot write the downloaded f.gz in {tmp_path}: Permission denied"):
        load.locate_mnist(tmp_path, files={"f": hashlib.sha256(b"digits").hexdigest()}, mirrors=["http://127.0.0.1:9/"])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- sweeps: every field, random damage


def test_every_metadata_field_with_every_wrong_type_is_a_checkpoint_error(tmp_path):
    """Each field of a full checkpoint's metadata (and of its nested objects and first history
    entry) replaced by each hostile value, or deleted: loading, reading the metadata and rendering
    ``gpumlp info`` either work or raise ``GpumlpError``, never anything else (~500 cases)."""
    import copy

    from gpumlp.cli.info import info_rows
    from gpumlp.errors import GpumlpError

    m = MLP((784, 8, 10), seed=1)
    rng_state = np.random.default_rng([0, 1]).bit_generator.state
    good = checkpoint.save(
        tmp_path / "g.json", m, {"optimizer.velocity": np.zeros(m.n_params)}, config={"sizes": [784, 8, 10]},
        history=[{"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.9, "seconds": 1.0, "lr": 0.1, "batch_size": 10}],
        train_state={"epochs_done": 1, "rng_state": rng_state, "best_epoch": None}, optimizer={"name": "momentum"},
        test_accuracy=0.9, test_size=10000,
    )  # fmt: skip
    doc = json.loads(good.read_text())
    fields = []

    def walk(obj, prefix):
        for key, value in obj.items():
            if key != "params":
                fields.append([*prefix, key])
                if isinstance(value, dict):
                    walk(value, [*prefix, key])
                elif isinstance(value, list) and value and isinstance(value[0], dict):
                    walk(value[0], [*prefix, key, 0])

    walk(doc, [])
    assert len(fields) > 35
    path, cases = tmp_path / "f.json", 0
    for field in fields:
        for value in (None, True, "x", [], {}, -1, 10**400, float("nan"), float("inf"), "delete"):
            spoiled = copy.deepcopy(doc)
            parent = spoiled
            for key in field[:-1]:
                parent = parent[key]
            if value == "delete":
                del parent[field[-1]]
            else:
                parent[field[-1]] = value
            path.write_text(json.dumps(spoiled))
            for read in (lambda: info_rows(checkpoint.describe(path)), lambda: checkpoint.read_metadata(path)):
                try:
                    read()
                except GpumlpError:
                    pass
            cases += 1
    assert cases > 350


def test_random_damage_to_npz_gzip_and_png_is_one_error(tmp_path):
    """Bytes flipped at random (half of the npz trials in its zip headers): every outcome is a
    result or a ``GpumlpError`` (this sweep found numpy's tokenize.TokenError on a cut npy header)."""
    import gzip
    import io
    import random

    from gpumlp.data.idx import read_idx
    from gpumlp.data.images import load_digit
    from gpumlp.errors import GpumlpError

    rng = random.Random(0)
    npz = checkpoint.save(tmp_path / "g.npz", MLP((784, 8, 10), seed=1)).read_bytes()
    starts = [i for i in range(len(npz)) if npz[i : i + 4] in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06")]
    headers = sorted({j for i in starts for j in range(i, min(i + 200, len(npz)))})
    idx = b"\0\0\x08\x03" + struct.pack(">III", 3, 28, 28) + bytes(3 * 784)
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    im = Image.new("L", (40, 40), 255)
    im.paste(0, (10, 10, 30, 30))
    im.save(buf, "PNG")

    def flipped(raw: bytes, where=None) -> bytes:
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[rng.choice(where) if where else rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)

    for trial in range(400):
        for name, raw, read in (
            ("f.npz", flipped(npz, headers if trial % 2 else None), checkpoint.load),
            ("f.gz", flipped(gzip.compress(idx)), read_idx),
            ("f.png", flipped(buf.getvalue()), load_digit),
        ):
            (tmp_path / name).write_bytes(raw)
            try:
                read(tmp_path / name)
            except GpumlpError:
                pass
