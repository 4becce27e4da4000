"""One record per dataset: its files, their published checksums, where to download them, its class
names and how its pixels are scaled. ``gpumlp/data/load.py`` locates, downloads, verifies and reads any
of them; adding a dataset in MNIST's IDX layout is one record here (and its tests).

All three datasets here share MNIST's layout: four IDX files of the same names and shapes, 60,000
training and 10,000 test images of 28×28 uint8 pixels, labels 0–9.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpumlp.errors import ConfigError
from gpumlp.records import Registry

# The four IDX files, decompressed, and their exact sizes (the same in all three datasets): no file
# under these names is ever read, or inflated, beyond them.
IDX_SIZES = {
    "train-images-idx3-ubyte": 47_040_016,  # 16-byte header + 60000·28·28
    "train-labels-idx1-ubyte": 60_008,  # 8-byte header + 60000
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}

# What a record's checksums are digests of, and how a message names them.
CHECKSUMS = {
    "sha256": "sha256 of the decompressed file",  # mirrors serve differently compressed .gz files
    "md5-gz": "md5 of the .gz as published",  # only the published .gz file itself can be checked
}


@dataclass(frozen=True)
class Dataset:
    """A dataset in MNIST's IDX layout. ``files`` maps each IDX file name (without ``.gz``) to the
    hex digest that ``checksum`` names; the network sees ``pixel / input_divisor``."""

    name: str  # --dataset NAME, and the cache folder ~/.cache/gpumlp/NAME
    title: str  # how messages name it
    files: dict[str, str]
    checksum: str  # a key of CHECKSUMS
    mirrors: tuple[str, ...]  # base URLs, tried in order, each file at BASE/<name>.gz
    classes: tuple[str, ...]  # the name of label 0, 1, …
    source: str  # where the checksums and mirrors were published
    input_divisor: float = 255.0  # uint8 pixels / 255 → [0, 1]
    one: str = "a digit"  # one member of its classes: "probably not a digit" when the network is not sure

    def __post_init__(self):
        if self.checksum not in CHECKSUMS:
            raise ConfigError(f"dataset {self.name}: unknown checksum kind {self.checksum!r}")

    @property
    def stored_name(self) -> dict[str, str]:
        """The name each file must have on disk: ``name.gz`` where only the .gz can be checked."""
        gz = self.checksum == "md5-gz"
        return {name: f"{name}.gz" if gz else name for name in self.files}

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The classes' names for reports, or None where they are just the digits 0–9."""
        return None if self.classes == DIGITS else self.classes


DIGITS = tuple(str(d) for d in range(10))

MNIST = Dataset(
    name="mnist",
    title="MNIST",
    files={
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    checksum="sha256",
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    classes=DIGITS,
    source="gpumlp's digests of the decompressed files, checked against the real files by its tests",
)

FASHION_MNIST = Dataset(
    name="fashion-mnist",
    title="Fashion-MNIST",
    files={
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    checksum="md5-gz",
    # The README's table links http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ (plain
    # HTTP, which gpumlp does not download over); it also says the files are in the repository's
    # data/fashion folder, served over HTTPS here.
    mirrors=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    one="a garment, shoe or bag",
    source="https://github.com/zalandoresearch/fashion-mnist README (Get the Data, Labels); torchvision's FashionMNIST",
)

KMNIST = Dataset(
    name="kmnist",
    title="Kuzushiji-MNIST",
    files={
        "train-images-idx3-ubyte": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte": "7320c461ea6c1c855c0b718fb2a4b134",
    },
    checksum="md5-gz",
    # The README links http://codh.rois.ac.jp/kmnist/dataset/kmnist/; the same host and path over HTTPS.
    mirrors=("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),  # one hiragana of each row
    one="a hiragana character",
    source="https://github.com/rois-codh/kmnist README (file links); checksums as in torchvision's KMNIST",
)

DATASETS: Registry[Dataset] = Registry("dataset", "--dataset")
for _rec in (MNIST, FASHION_MNIST, KMNIST):
    DATASETS.register(_rec)


def choices() -> str:
    """``"mnist, fashion-mnist or kmnist"``: the registered names, read when a help is shown."""
    names = list(DATASETS)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


# register(rec) adds one: --dataset, load_dataset, checkpoints and every command then accept it.
register, unregister, registered = DATASETS.register, DATASETS.unregister, DATASETS.registered
get = DATASETS.lookup  # the record of --dataset NAME, or a ConfigError naming the choices


def checkpoint_fields(name: str) -> dict:
    """What a checkpoint records about the data it was trained on: the dataset's name, and the
    checksums of its files (``mnist_sha256`` for MNIST, as checkpoints always had)."""
    rec = get(name)
    if rec is MNIST:
        return {"dataset": rec.name, "mnist_sha256": dict(rec.files)}
    return {"dataset": rec.name, "data_checksums": {"kind": CHECKSUMS[rec.checksum], "files": dict(rec.files)}}


def of_checkpoint(meta: dict) -> str:
    """The dataset a checkpoint's network was trained on: its ``dataset`` field, else its training
    configuration's, else MNIST (checkpoints written before datasets were recorded, and the Rust
    project's and Nielsen's networks, were all trained on MNIST)."""
    return meta.get("dataset") or (meta.get("config") or {}).get("dataset") or MNIST.name


def for_checkpoint(meta: dict, path, asked: str | None = None, any_dataset: bool = False) -> Dataset:
    """The dataset to evaluate a checkpoint on: the one it was trained on, or ``asked`` when it is
    the same or ``any_dataset`` allows another (a network scores nothing useful on another
    dataset's images, so a mismatch is refused unless it is wanted)."""
    trained = of_checkpoint(meta)
    if asked is None or asked == trained:
        return get(trained)
    wanted = get(asked)
    if not any_dataset:
        raise ConfigError(
            f"{path} was trained on {trained}, not {asked}; drop --dataset to use {trained}, "
            f"or add --any-dataset to evaluate it on {asked} anyway"
        )
    return wanted
