"""Tests for gpumlp/data/datasets.py and the datasets it describes: the records, downloading and verifying a
Fashion-MNIST-like dataset (small generated files, served on 127.0.0.1), --dataset on the command
line, and checkpoints that remember their dataset.

Real Fashion-MNIST and KMNIST files are never downloaded here: their records are checked against the
checksums their publications list; the files these tests serve are generated, with their own MD5s
put into a test copy of the record.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import urllib.error
import urllib.request
from dataclasses import replace

import numpy as np
import pytest

from gpumlp.cli.bench import bench_data
from gpumlp.data import datasets, download
from gpumlp.data import load as data
from gpumlp.data.datasets import DATASETS, FASHION_MNIST, IDX_SIZES, KMNIST, MNIST
from gpumlp.errors import CheckpointError, ConfigError, DataError
from gpumlp.formats import checkpoint
from gpumlp.formats.metadata import check_meta
from gpumlp.model import MLP
from gpumlp.training.config import TrainConfig, resume_config
from standins.entry_point import run_main
from standins.local_server import serve

pytestmark = pytest.mark.usefixtures("isolated_env")  # no test sees the user's cache, data or proxies

N_TRAIN, N_TEST = 60, 20  # the generated dataset: enough for --train-size 40 --val-size 10 --test-size 20


def idx(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array."""
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def generated(seed: int = 0) -> dict[str, np.ndarray]:
    """A small dataset in MNIST's layout: random 28×28 images, labels 0–9."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST)[::-1] % 10).astype(np.uint8),
    }


def gzipped(arrays: dict[str, np.ndarray], level: int = 9) -> dict[str, bytes]:
    """Each file as the .gz a publication would serve (fixed mtime: the same bytes every time)."""
    return {name: gzip.compress(idx(a), compresslevel=level, mtime=0) for name, a in arrays.items()}


@pytest.fixture
def fashion_dir(tmp_path, monkeypatch):
    """A folder holding a generated Fashion-MNIST-like dataset as .gz files; the fashion-mnist and
    kmnist records in DATASETS now carry those files' MD5s (names, classes and kind unchanged)."""
    arrays, gz = generated(), gzipped(generated())
    folder = tmp_path / "fashion"
    folder.mkdir()
    for name, raw in gz.items():
        (folder / f"{name}.gz").write_bytes(raw)
    files = {name: md5(raw) for name, raw in gz.items()}
    monkeypatch.setitem(DATASETS, "fashion-mnist", replace(FASHION_MNIST, files=files))
    monkeypatch.setitem(DATASETS, "kmnist", replace(KMNIST, files=files))
    return folder, arrays


# ---------------------------------------------------------------- the records


@pytest.mark.parametrize("rec", DATASETS.values(), ids=list(DATASETS))
def test_every_record_is_complete(rec):
    """Each record: its name as key, MNIST's four file names, a digest of the length its kind
    makes, ten distinct class names, and only HTTPS mirrors."""
    assert DATASETS[rec.name] is rec and datasets.get(rec.name) is rec
    assert list(rec.files) == list(IDX_SIZES)
    length = {"sha256": 64, "md5-gz": 32}[rec.checksum]
    for digest in rec.files.values():
        assert re.fullmatch(f"[0-9a-f]{{{length}}}", digest), digest
    assert len(rec.classes) == 10 and len(set(rec.classes)) == 10
    assert rec.mirrors and all(m.startswith("https://") and m.endswith("/") for m in rec.mirrors)
    assert rec.input_divisor == 255.0
    assert rec.source


def test_records_hold_the_published_checksums_and_classes():
    """MNIST keeps gpumlp's SHA-256 of the decompressed files; Fashion-MNIST and KMNIST carry the MD5
    of each .gz as their publications list it (zalandoresearch/fashion-mnist's README, and
    torchvision's FashionMNIST and KMNIST definitions)."""
    assert MNIST.checksum == "sha256" and MNIST.files == MNIST.files
    assert MNIST.files["train-images-idx3-ubyte"].startswith("ba891046e650")
    assert FASHION_MNIST.checksum == KMNIST.checksum == "md5-gz"
    assert list(FASHION_MNIST.files.values()) == [
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310",
    ]  # fmt: skip
    assert list(KMNIST.files.values()) == [
        "bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
        "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134",
    ]  # fmt: skip
    assert FASHION_MNIST.classes[0] == "T-shirt/top" and FASHION_MNIST.classes[9] == "Ankle boot"
    assert KMNIST.classes == ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
    assert MNIST.class_names is None and FASHION_MNIST.class_names == FASHION_MNIST.classes
    assert FASHION_MNIST.stored_name["train-images-idx3-ubyte"] == "train-images-idx3-ubyte.gz"
    assert MNIST.stored_name["train-images-idx3-ubyte"] == "train-images-idx3-ubyte"


def test_unknown_dataset_names_the_choices():
    for call in (lambda: datasets.get("cifar10"), lambda: TrainConfig(dataset="cifar10")):
        with pytest.raises(
            ConfigError, match="unknown --dataset 'cifar10': choose one of mnist, fashion-mnist, kmnist"
        ):
            call()


def test_each_dataset_has_its_own_cache_folder(tmp_path):
    assert data.default_cache_dir() == tmp_path / "xdg-cache" / "gpumlp" / "mnist"
    assert data.search_dirs(None, "fashion-mnist") == [tmp_path / "xdg-cache" / "gpumlp" / "fashion-mnist"]


# ---------------------------------------------------------------- downloading and verifying


def test_fashion_like_dataset_downloads_verifies_and_loads(server, tmp_path):  # noqa: F811
    """Every missing .gz is fetched from the record's mirror, checked against its MD5, kept under
    its published name, and read; a second load asks the server for nothing."""
    arrays, gz = generated(), gzipped(generated())
    for name, raw in gz.items():
        server.routes[f"/fashion/{name}.gz"] = serve(raw)
    rec = replace(FASHION_MNIST, files={n: md5(raw) for n, raw in gz.items()}, mirrors=(f"{server.url}/fashion/",))
    folder = tmp_path / "d"
    X_train, y_train, X_test, y_test = data.load_dataset(rec, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.gz" for n in gz)
    assert all((folder / f"{n}.gz").read_bytes() == raw for n, raw in gz.items())
    assert len(server.requests) == 4
    np.testing.assert_array_equal(X_train, arrays["train-images-idx3-ubyte"].reshape(N_TRAIN, 784) / np.float32(255))
    np.testing.assert_array_equal(X_test, arrays["t10k-images-idx3-ubyte"].reshape(N_TEST, 784) / np.float32(255))
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])
    assert X_train.dtype == np.float32 and X_train.max() <= 1.0
    again = data.load_dataset(rec, folder)
    assert len(server.requests) == 4  # found, not downloaded again
    np.testing.assert_array_equal(again[0], X_train)


def test_a_recompressed_file_does_not_match_the_published_md5(server, tmp_path):  # noqa: F811
    """The MD5 is of the .gz as published: the same images compressed differently are refused, and
    nothing is left under the real name."""
    published, other = gzipped(generated(), level=9), gzipped(generated(), level=1)
    name = "train-labels-idx1-ubyte"
    assert gzip.decompress(published[name]) == gzip.decompress(other[name]) and published[name] != other[name]
    server.routes[f"/{name}.gz"] = serve(other[name])
    with pytest.raises(DataError, match=r"checksum mismatch \(md5-gz [0-9a-f]{12}…, expected") as e:
        download.download_file(name, md5(published[name]), tmp_path, [f"{server.url}/"], progress=False, kind="md5-gz")
    assert name in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_md5_datasets_take_only_the_published_gz(fashion_dir):
    """A decompressed copy cannot be checked against the MD5 of a .gz: it is not looked for, and a
    non-gzip file under the .gz name is refused, saying why."""
    folder, _ = fashion_dir
    raw_name = "t10k-labels-idx1-ubyte"
    raw = gzip.decompress((folder / f"{raw_name}.gz").read_bytes())
    (folder / f"{raw_name}.gz").unlink()
    (folder / raw_name).write_bytes(raw)
    with pytest.raises(DataError) as e:
        data.load_dataset("fashion-mnist", folder, download=False)
    assert f"Fashion-MNIST files not found in {folder} (--data-dir): {raw_name}.gz;" in str(e.value)
    (folder / f"{raw_name}.gz").write_bytes(raw)  # decompressed, under the .gz name
    with pytest.raises(DataError, match="is not gzip-compressed, and only the published .gz file can be checked"):
        data.load_dataset("fashion-mnist", folder, download=False)


def test_another_datasets_file_is_named_as_such(fashion_dir, tmp_path):
    """The three datasets share file names: a file from another one fails its checksum, and the
    message says to keep each dataset in its own folder."""
    folder, _ = fashion_dir
    other = gzipped(generated(seed=1))["train-images-idx3-ubyte"]
    (folder / "train-images-idx3-ubyte.gz").write_bytes(other)
    with pytest.raises(DataError) as e:
        data.load_dataset("fashion-mnist", folder, download=False)
    message = str(e.value)
    assert "is not the Fashion-MNIST file it is named after (md5-gz" in message
    assert "the md5 of the .gz as published" in message and "keep each in its own folder" in message


@pytest.mark.parametrize("named_by", ["--data-dir", "$GPUMLP_DATA_DIR"])
def test_a_file_that_fails_its_checksum_names_how_its_folder_was_named(fashion_dir, monkeypatch, named_by):
    """The fix names the folder's source: a user who set GPUMLP_DATA_DIR (as for the tests) and
    asked for --dataset fashion-mnist passed no --data-dir to fix."""
    folder, _ = fashion_dir
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzipped(generated(seed=1))["train-images-idx3-ubyte"])
    monkeypatch.setenv("GPUMLP_DATA_DIR", str(folder))
    with pytest.raises(DataError) as e:
        data.load_dataset("fashion-mnist", folder if named_by == "--data-dir" else None, download=False)
    message = str(e.value)
    assert f"delete it so gpumlp downloads it again, or fix {named_by}" in message
    assert message.count("--data-dir") == (named_by == "--data-dir")


def test_bench_data_takes_the_dataset(fashion_dir):
    folder, arrays = fashion_dir
    X, y, source = bench_data(folder, 30, "fashion-mnist")
    assert source == "Fashion-MNIST training images" and X.shape == (30, 784)
    np.testing.assert_array_equal(y, arrays["train-labels-idx1-ubyte"][:30])
    _, _, source = bench_data(folder / "none", 30, "kmnist")
    assert source.startswith("random pixels and labels (Kuzushiji-MNIST not found")


# ---------------------------------------------------------------- the command line


def test_train_offline_with_an_empty_data_dir_is_one_line(tmp_path, monkeypatch, capsys):
    """Without network (every download fails as it does offline), one line naming the dataset's
    files, the folder and the mirror it tried; exit 2; nothing written."""

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    empty = tmp_path / "EMPTY"
    empty.mkdir()
    code, out, err = run_main(monkeypatch, capsys, "train", "--dataset", "fashion-mnist", "--data-dir", str(empty))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        f"error: Fashion-MNIST files not found in {empty} (--data-dir): train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; could not download"
    )
    assert FASHION_MNIST.mirrors[0] + "train-images-idx3-ubyte.gz" in err
    assert list(empty.iterdir()) == []


TRAIN = ("--layers", "784,10", "--train-size", "40", "--val-size", "10", "--test-size", "20", "--epochs", "1", "-q")


@pytest.fixture
def fashion_checkpoint(fashion_dir, tmp_path, monkeypatch, capsys):
    """A network trained by ``gpumlp train --dataset fashion-mnist`` on the generated dataset."""
    folder, _ = fashion_dir
    ckpt = tmp_path / "fashion.npz"
    args = ("train", "--dataset", "fashion-mnist", *TRAIN, "--data-dir", str(folder), "--save", str(ckpt))
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "on 40 Fashion-MNIST images (10 for validation)" in out + err
    return ckpt, folder


def test_checkpoint_records_its_dataset(fashion_checkpoint):
    ckpt, _ = fashion_checkpoint
    meta = checkpoint.read_metadata(ckpt)
    assert meta["dataset"] == "fashion-mnist" and meta["config"]["dataset"] == "fashion-mnist"
    assert meta["data_checksums"]["kind"] == "md5 of the .gz as published"
    assert meta["data_checksums"]["files"] == DATASETS["fashion-mnist"].files
    assert "mnist_sha256" not in meta
    assert datasets.of_checkpoint(meta) == "fashion-mnist"


def test_test_reports_class_names_of_the_checkpoints_dataset(fashion_checkpoint, monkeypatch, capsys):
    ckpt, folder = fashion_checkpoint
    code, out, err = run_main(monkeypatch, capsys, "test", str(ckpt), "--data-dir", str(folder), "--test-size", "20")
    assert code == 0, err
    assert "test accuracy" in out and "(20 images)" in out
    lines = out.splitlines()
    assert any(line.startswith("class ") and "precision" in line for line in lines)
    assert any(line.startswith("0 T-shirt/top ") for line in lines)
    assert any(line.startswith("9 Ankle boot ") for line in lines)
    assert "(rows: true class, columns: predicted class, numbered as above)" in out
    code, out, _ = run_main(monkeypatch, capsys, "test", str(ckpt), "--data-dir", str(folder), "--test-size", "20",
                            "--json")  # fmt: skip
    report = json.loads(out)
    assert code == 0 and report["dataset"] == "fashion-mnist"
    assert [c["name"] for c in report["classes"]] == list(FASHION_MNIST.classes)


def test_test_refuses_another_dataset_unless_asked(fashion_checkpoint, monkeypatch, capsys):
    ckpt, folder = fashion_checkpoint
    args = ("test", str(ckpt), "--data-dir", str(folder), "--test-size", "20")
    code, out, err = run_main(monkeypatch, capsys, *args, "--dataset", "kmnist")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == (
        f"error: {ckpt} was trained on fashion-mnist, not kmnist; drop --dataset to use fashion-mnist, "
        "or add --any-dataset to evaluate it on kmnist anyway\n"
    )
    code, out, err = run_main(monkeypatch, capsys, *args, "--dataset", "kmnist", "--any-dataset")
    assert code == 0, err
    assert any(line.startswith("9 wo ") for line in out.splitlines())  # KMNIST's class names
    code, out, err = run_main(monkeypatch, capsys, *args, "--dataset", "fashion-mnist")  # the same: no flag needed
    assert code == 0, err


def test_predict_index_names_the_class(fashion_checkpoint, monkeypatch, capsys):
    ckpt, folder = fashion_checkpoint
    code, out, err = run_main(
        monkeypatch, capsys, "predict", str(ckpt), "--index", "10", "--data-dir", str(folder), "--no-preview"
    )
    assert code == 0, err
    label = generated()["t10k-labels-idx1-ubyte"][10]
    line = next(x for x in out.splitlines() if x.startswith("fashion-mnist-test[10]: "))
    assert f"(label {label} {FASHION_MNIST.classes[label]})" in line
    predicted = int(line.split(": ")[1].split()[0])
    assert line.startswith(f"fashion-mnist-test[10]: {predicted} {FASHION_MNIST.classes[predicted]} (label")
    code, out, _ = run_main(
        monkeypatch, capsys, "predict", str(ckpt), "--index", "10", "--data-dir", str(folder), "--json"
    )
    row = json.loads(out)["predictions"][0]
    assert row["class"] == FASHION_MNIST.classes[row["digit"]] and row["source"] == "fashion-mnist-test[10]"
    code, out, err = run_main(
        monkeypatch, capsys, "predict", str(ckpt), "--index", "10", "--data-dir", str(folder), "--dataset", "mnist"
    )
    assert code == 2 and "was trained on fashion-mnist, not mnist" in err


def test_resumed_run_keeps_its_dataset(fashion_checkpoint, monkeypatch, capsys):
    ckpt, folder = fashion_checkpoint
    code, _, err = run_main(
        monkeypatch, capsys, "train", "--resume", str(ckpt), "--epochs", "2", "--dataset", "mnist",
        "--data-dir", str(folder),
    )  # fmt: skip
    assert code == 2 and "--dataset mnist contradicts the checkpoint (fashion-mnist)" in err
    # A checkpoint from before datasets were recorded was trained on MNIST: it resumes on MNIST only.
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "dataset"}
    with pytest.raises(ConfigError, match="--dataset kmnist contradicts the checkpoint \\(mnist\\)"):
        resume_config(old, {"dataset": "kmnist"})
    assert resume_config(old, {"epochs": 40}).dataset == "mnist"


# ---------------------------------------------------------------- checkpoints


def test_checkpoints_without_a_dataset_mean_mnist(tmp_path):
    model = MLP((784, 10))
    path = checkpoint.save(tmp_path / "old.npz", model)
    meta = checkpoint.read_metadata(path)
    assert "dataset" not in meta and datasets.of_checkpoint(meta) == "mnist"
    assert datasets.for_checkpoint(meta, path) is MNIST
    with pytest.raises(ConfigError, match="was trained on mnist, not fashion-mnist"):
        datasets.for_checkpoint(meta, path, "fashion-mnist")
    assert datasets.for_checkpoint(meta, path, "fashion-mnist", any_dataset=True) is FASHION_MNIST


def test_checkpoint_dataset_field_is_checked(tmp_path):
    base = {"sizes": [784, 10], "activation": "sigmoid", "loss": "mse", "dtype": "float32"}
    check_meta(tmp_path, dict(base, dataset="kmnist", config={"dataset": "kmnist"}))
    with pytest.raises(CheckpointError, match="metadata dataset must be one of mnist, fashion-mnist, kmnist"):
        check_meta(tmp_path, dict(base, dataset="cifar10"))
    with pytest.raises(CheckpointError, match="config.dataset 'mnist' disagrees with the network's dataset"):
        check_meta(tmp_path, dict(base, dataset="kmnist", config={"dataset": "mnist"}))
