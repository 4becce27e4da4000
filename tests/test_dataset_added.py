"""Adding a dataset is one record: "MNIST transposed" (each digit mirrored about its diagonal), written and
registered in this module only (``datasets.registered``), its four files served by the local
test server as its mirror. ``gpumlp train --dataset mnist-transposed`` downloads, verifies and
trains on it; ``gpumlp test`` evaluates on it (the checkpoint remembers it); a file that fails its
checksum is one line, and nothing is kept under its name."""

from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gpumlp.cli import commands as cli
from gpumlp.data import datasets
from gpumlp.data.datasets import DATASETS, DIGITS, IDX_SIZES, Dataset
from gpumlp.formats.checkpoint import read_metadata
from standins.local_server import serve

runner = CliRunner()
HEADER = {"images": 16, "labels": 8}  # IDX header bytes: magic, then one 4-byte size per axis


@pytest.fixture(scope="module")
def transposed(mnist_dir):
    """The four IDX files of MNIST transposed: ``{name: (raw bytes, .gz bytes)}``, each image (28, 28) transposed."""
    files = {}
    for name in IDX_SIZES:
        raw = bytearray(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
        if "images" in name:
            pixels = np.frombuffer(raw, np.uint8, offset=HEADER["images"]).reshape(-1, 28, 28)
            raw[HEADER["images"] :] = pixels.transpose(0, 2, 1).tobytes()
        files[name] = (bytes(raw), gzip.compress(bytes(raw), compresslevel=1))
    return files


def record(files: dict, url: str) -> Dataset:
    return Dataset(
        name="mnist-transposed",
        title="MNIST transposed",
        files={name: hashlib.sha256(raw).hexdigest() for name, (raw, _) in files.items()},
        checksum="sha256",
        mirrors=(f"{url}/transposed/",),
        classes=DIGITS,
        source="this test: MNIST with every image transposed",
    )


@pytest.fixture
def mirror(transposed, server):
    """The local server serving the four .gz files, and the record naming it, registered."""
    for name, (_, gz) in transposed.items():
        server.routes[f"/transposed/{name}.gz"] = serve(gz)
    with datasets.registered(record(transposed, server.url)) as rec:
        yield server, rec
    assert "mnist-transposed" not in DATASETS


def invoke(args: list[str], code: int = 0):
    result = runner.invoke(cli.app, args)
    assert result.exit_code == code, result.output
    return result


def test_trained_and_tested_through_the_cli_on_its_downloaded_files(mirror, mnist_dir, tmp_path):
    server, rec = mirror
    folder, save = tmp_path / "data", tmp_path / "inv.npz"
    args = ["train", "--dataset", "mnist-transposed", "--activation", "relu", "--loss", "ce", "--layers", "784,32,10",
            "--lr", "0.1", "--batch-size", "32", "--epochs", "2", "--train-size", "5000", "--val-size", "500",
            "--test-size", "2000", "--data-dir", str(folder), "--save", str(save), "--quiet"]  # fmt: skip
    invoke(args)
    assert sorted(server.requests) == sorted(f"/transposed/{name}.gz" for name in IDX_SIZES)
    meta = read_metadata(save)
    assert meta["dataset"] == "mnist-transposed" and meta["data_checksums"]["files"] == rec.files
    assert meta["test_accuracy"] > 0.8

    report = json.loads(invoke(["test", str(save), "--data-dir", str(folder), "--test-size", "2000", "--json"]).output)
    assert report["accuracy"] == pytest.approx(meta["test_accuracy"])
    assert len(server.requests) == 4  # found and verified, not downloaded again
    # The same network on MNIST's own (not transposed) digits: refused unless asked, and then poor.
    result = invoke(["test", str(save), "--dataset", "mnist", "--data-dir", str(mnist_dir)], code=2)
    assert "was trained on mnist-transposed, not mnist; drop --dataset" in result.output
    result = invoke(["test", str(save), "--dataset", "mnist", "--any-dataset", "--data-dir", str(mnist_dir), "--json"])
    assert json.loads(result.output)["accuracy"] < 0.5


def test_a_file_failing_its_checksum_is_one_line_and_is_not_kept(mirror, transposed, tmp_path):
    server, rec = mirror
    name = "t10k-labels-idx1-ubyte"
    raw = bytearray(transposed[name][0])
    raw[-1] = (raw[-1] + 1) % 10  # one label changed
    server.routes[f"/transposed/{name}.gz"] = serve(gzip.compress(bytes(raw)))
    folder = tmp_path / "data"
    args = ["train", "--dataset", "mnist-transposed", "--epochs", "1", "--train-size", "100", "--val-size", "0",
            "--data-dir", str(folder), "--save", str(tmp_path / "x.npz")]  # fmt: skip
    result = invoke(args, code=2)
    lines = result.stderr.strip().splitlines()  # download progress, then the error
    [line] = [text for text in lines if text.startswith("error: ")]
    assert line == lines[-1] and result.stdout == "", result.output
    assert line.startswith("error: MNIST transposed files not found in") and "checksum mismatch (sha256" in line, line
    assert rec.files[name][:12] in line and "Traceback" not in result.output
    assert not (folder / name).exists() and not (folder / f"{name}.gz").exists()
    assert not (tmp_path / "x.npz").exists()


def test_every_help_names_it_while_it_is_registered(mirror):
    def help_of(*command: str) -> str:
        result = runner.invoke(cli.app, [*command, "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
        assert result.exit_code == 0, result.output
        return " ".join(result.output.replace("│", " ").split())

    for command in (("train",), ("test",), ("bench",)):
        assert "mnist, fashion-mnist, kmnist or mnist-transposed" in help_of(*command), command
    _, rec = mirror
    datasets.unregister(rec.name)
    try:
        assert "mnist, fashion-mnist or kmnist" in help_of("test") and "mnist-transposed" not in help_of("train")
        result = invoke(["train", "--dataset", "mnist-transposed", "--epochs", "1"], code=2)
        assert "unknown --dataset 'mnist-transposed': choose one of mnist, fashion-mnist, kmnist" in result.output
    finally:
        datasets.register(rec)
