"""'Probably not a digit': the loss record's certainty rule, a floor chosen on each network's own
validation images and kept in its checkpoint, and how `predict` says it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import gpumlp
from gpumlp.cli import commands as cli
from gpumlp.cli.predict import predict_images
from gpumlp.data.load import split
from gpumlp.errors import CheckpointError, ConfigError
from gpumlp.formats.checkpoint import update_metadata
from gpumlp.formats.metadata import confidence_floor as floor_in
from gpumlp.losses import DEFAULT_FLOOR, LOSSES, NOT_SURE_FRACTION, floor_of
from gpumlp.training.evaluation import confidence_floor

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"
BEST = ROOT / "checkpoints" / "gpumlp-best-784-800-800-10.npz"
runner = CliRunner()


def test_the_floor_is_the_chosen_share_of_validation_images():
    values = np.linspace(0.0, 1.0, 1001)[::-1]  # any order
    floor = floor_of(values, 0.01)
    assert np.mean(values < floor) == pytest.approx(0.01, abs=0.001)
    assert floor_of([], 0.01) == DEFAULT_FLOOR
    C = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    for loss in LOSSES.values():
        assert loss.certainty(np, C).tolist() == [0.7, 0.4]


def its_own_floor(path, mnist):
    """A network and its floor on its own validation images (what `gpumlp train` stores), now."""
    model, meta = gpumlp.load(path)
    c = meta["config"]
    _, (X_val, _), _ = split(*mnist, c["train_size"], c["val_size"], c["test_size"])
    return model, meta, confidence_floor(model, X_val)


@pytest.mark.parametrize("path", [SHIPPED, BEST], ids=["784-256-10", "best"])
def test_each_shipped_network_carries_its_own_floor(path, mnist):
    """Added by scripts/add_confidence_floor.py: the level 1% of its 10,000 validation images fall below."""
    _, meta, floor = its_own_floor(path, mnist)
    stored = meta["confidence_floor"]
    assert stored["images"] == floor["images"] == 10_000 and stored["fraction"] == NOT_SURE_FRACTION
    assert floor_in(meta) == stored["value"] == pytest.approx(floor["value"], rel=1e-6)
    assert floor_in(meta) != DEFAULT_FLOOR


def test_false_alarms_on_mnist_and_hits_on_non_digits(mnist):
    """Measured with the shipped 784-256-10 and the floor its file holds (60.3%, on its 10,000
    validation images): 0.97% of MNIST test digits 'not sure', and 5 of 60 non-digits (4 of 20
    letters, 1 of 20 shapes, 0 of 20 pairs of digits): a network trained only on digits is sure of
    most things it is shown."""
    from standins.nondigits import nondigit_set

    pytest.importorskip("PIL")
    model, meta = gpumlp.load(SHIPPED)
    floor = meta["confidence_floor"]
    assert 0.55 < floor["value"] < 0.65
    _, _, X, y = mnist
    alarms = np.mean([not r["confident"] for r in predict_images(model, list(X), floor=floor["value"])])
    assert alarms <= 0.015
    others = nondigit_set(X, y)
    results = predict_images(model, [gpumlp.load_digit(data) for data, _ in others], floor=floor["value"])
    hits = [not r["confident"] for r in results]
    assert np.mean(hits) >= 0.05
    assert all(r["reason"].startswith("probably not a digit: ") for r in results if not r["confident"])


def test_gpumlp_train_stores_the_floor(mnist_dir, tmp_path):
    ckpt = tmp_path / "small.npz"
    args = ["--layers", "784,10", "--epochs", "1", "--train-size", "2000", "--val-size", "500", "--test-size", "100"]
    result = runner.invoke(cli.app, ["train", *args, "--data-dir", str(mnist_dir), "--save", str(ckpt)])
    assert result.exit_code == 0, result.output
    _, meta = gpumlp.load(ckpt)
    assert meta["confidence_floor"]["images"] == 500 and meta["confidence_floor"]["fraction"] == NOT_SURE_FRACTION
    assert 0 < floor_in(meta) == meta["confidence_floor"]["value"] < 1


def test_a_file_without_a_floor_gets_the_default(tmp_path):
    model, _ = gpumlp.load(SHIPPED)
    bare = tmp_path / "bare.npz"
    gpumlp.save(bare, model)
    _, meta = gpumlp.load(bare)
    assert "confidence_floor" not in meta and floor_in(meta) == DEFAULT_FLOOR
    bad = tmp_path / "bad.npz"
    gpumlp.save(bad, model, confidence_floor={"value": 1.5, "fraction": 0.01, "images": 10})
    with pytest.raises(CheckpointError, match="metadata confidence_floor must be"):
        gpumlp.load(bad)


@pytest.mark.parametrize(("dataset", "one"), [("mnist", "a digit"), ("fashion-mnist", "a garment, shoe or bag")])
def test_predict_says_not_sure_in_the_datasets_words(dataset, one, tmp_path):
    """A floor of 100%: every answer is 'not sure', in text and in --json, worded by the dataset."""
    pytest.importorskip("PIL")
    model, _ = gpumlp.load(SHIPPED)
    ckpt = tmp_path / "doubtful.npz"
    gpumlp.save(ckpt, model, dataset=dataset, confidence_floor={"value": 1.0, "fraction": 0.01, "images": 1})
    image = str(ROOT / "docs" / "digits" / "three.png")
    text = runner.invoke(cli.app, ["predict", str(ckpt), image, "--no-preview"])
    assert text.exit_code == 0, text.output
    assert f"not sure: probably not {one}: top confidence " in text.output
    out = runner.invoke(cli.app, ["predict", str(ckpt), image, "--json"])
    row = json.loads(out.output)["predictions"][0]
    assert row["confident"] is False and row["reason"].startswith(f"probably not {one}: ")
    sure = json.loads(runner.invoke(cli.app, ["predict", str(SHIPPED), image, "--json"]).output)["predictions"][0]
    assert sure["confident"] is True and "reason" not in sure


def _script():
    spec = importlib.util.spec_from_file_location("add_confidence_floor", ROOT / "scripts" / "add_confidence_floor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _contents(path: Path) -> tuple[dict, dict]:
    """Every array of an npz (metadata as JSON) by name, as read by numpy alone."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "metadata"}
        return json.loads(z["metadata"].tobytes()), arrays


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_update_metadata_changes_that_field_only(suffix, tmp_path):
    model, meta = gpumlp.load(SHIPPED)
    ckpt = tmp_path / f"copy{suffix}"
    state = {"velocity": np.linspace(-1, 1, model.n_params, dtype=np.float32)}
    gpumlp.save(ckpt, model, state, config=meta["config"], history=meta["history"])
    _, before = gpumlp.load(ckpt)
    floor = {"value": 0.75, "fraction": 0.01, "images": 3}
    update_metadata(ckpt, confidence_floor=floor)
    again, after = gpumlp.load(ckpt)
    assert after.pop("confidence_floor") == floor
    assert after.pop("state_arrays")["velocity"].tobytes() == state["velocity"].tobytes()
    assert after == {k: v for k, v in before.items() if k != "state_arrays"}
    assert all(again.params[k].tobytes() == v.tobytes() for k, v in model.params.items())
    with pytest.raises(ConfigError, match="'sizes' describe the network itself"):
        update_metadata(ckpt, sizes=[784, 10])


def test_the_script_adds_the_floor_and_changes_nothing_else(mnist_dir, tmp_path):
    """A copy of the shipped file without its floor gets the very same floor back; weights and every
    other field (read by numpy alone) stay as they were; a file with no run behind it is refused."""
    model, meta = gpumlp.load(SHIPPED)
    ckpt = tmp_path / "copy.npz"
    own = ("format", "version", "sizes", "activation", "loss", "init", "dtype", "input_divisor", "state_arrays")
    gpumlp.save(ckpt, model, **{k: v for k, v in meta.items() if k not in (*own, "confidence_floor")})
    before_meta, before_arrays = _contents(ckpt)
    assert "confidence_floor" not in before_meta
    assert _script().main([str(ckpt), "--data-dir", str(mnist_dir)]) == 0
    after_meta, after_arrays = _contents(ckpt)
    assert after_meta.pop("confidence_floor")["value"] == pytest.approx(meta["confidence_floor"]["value"], rel=1e-6)
    assert after_meta == before_meta
    assert after_arrays.keys() == before_arrays.keys()
    assert all(after_arrays[k].tobytes() == v.tobytes() for k, v in before_arrays.items())
    bare = tmp_path / "bare.npz"
    gpumlp.save(bare, model)
    assert _script().main([str(bare), "--data-dir", str(mnist_dir)]) == 2
    assert "confidence_floor" not in _contents(bare)[0]
