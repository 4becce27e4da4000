"""The input the network saw, out of ``gpumlp predict``: ``--json``'s ``input`` and ``--save-input DIR``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpumlp.cli import commands as cli
from gpumlp.cli.outputs import written_by_gpumlp
from gpumlp.data.images import load_digit
from standins.entry_point import run_main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = str(ROOT / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz")
THREE = ROOT / "docs" / "digits" / "three.png"

Image = pytest.importorskip("PIL.Image")
runner = CliRunner()


def predict(*args):
    out = runner.invoke(cli.app, ["predict", SHIPPED, *map(str, args)])
    assert out.exit_code == 0, out.output
    return out


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (28, 28)
        return np.asarray(im, dtype=np.float64).reshape(-1) / 255.0  # (784,)


def test_json_holds_the_input_the_network_saw(mnist_dir, mnist):
    rows = json.loads(predict(THREE, "--index", "0", "--json", "--data-dir", mnist_dir).stdout)["predictions"]
    file_input, test_input = (np.array(r["input"]) for r in rows)
    assert file_input.shape == (784,) and 0.0 <= file_input.min() and file_input.max() <= 1.0
    np.testing.assert_allclose(file_input, load_digit(THREE), atol=5e-5)  # 4 decimals
    np.testing.assert_allclose(test_input, mnist[2][0], atol=5e-5)


def test_save_input_writes_what_the_network_saw(tmp_path, mnist_dir, mnist):
    out = predict(THREE, "--index", "7", "--save-input", tmp_path / "seen", "--no-preview", "--data-dir", mnist_dir)
    three, test7 = tmp_path / "seen" / "three.png", tmp_path / "seen" / "mnist-test-7.png"
    assert f"saved {three}" in out.output and f"saved {test7}" in out.output
    assert written_by_gpumlp(three) and written_by_gpumlp(test7)
    np.testing.assert_allclose(read_png(three), load_digit(THREE), atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(read_png(test7), mnist[2][7], atol=0.5 / 255 + 1e-6)
    assert read_png(three).mean() < 0.5  # white digit on black, as MNIST
    again = predict(THREE, "--save-input", tmp_path / "seen", "--json")
    assert f"saved {three}" in again.stderr and json.loads(again.stdout)  # gpumlp's own file replaced


def test_save_input_never_replaces_a_file_gpumlp_did_not_write(tmp_path):
    shutil.copy(THREE, tmp_path / "three.png")  # the user's own picture, named like the output
    (tmp_path / "three-2.png").write_bytes(b"notes, not a picture")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    out = predict(tmp_path / "three.png", "--save-input", tmp_path, "--no-preview")
    assert f"saved {tmp_path / 'three-3.png'}" in out.output
    assert all((tmp_path / name).read_bytes() == data for name, data in before.items())
    # gpumlp's own picture as the input, in the folder it writes to: the input is kept too
    fed_back = tmp_path / "three-3.png"
    kept = fed_back.read_bytes()
    assert f"saved {tmp_path / 'three-3-2.png'}" in predict(fed_back, "--save-input", tmp_path).output
    assert fed_back.read_bytes() == kept


def test_two_images_of_one_name_get_two_files(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(THREE, tmp_path / folder / "x.png")
    predict(tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "--save-input", tmp_path / "out", "--no-preview")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x-2.png", "x.png"]


def test_save_input_into_a_file_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    taken = str(tmp_path / "taken")
    code, _, err = run_main(monkeypatch, capsys, "predict", SHIPPED, str(THREE), "--save-input", taken)
    assert code == 2 and err.count("\n") == 1 and "choose another --save-input folder" in err
