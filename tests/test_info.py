"""``gpumlp info``: the recipe a run trained with, and where an imported network came from."""

from __future__ import annotations

from typer.testing import CliRunner

import gpumlp
from gpumlp.cli import commands as cli
from gpumlp.formats import checkpoint

SMALL = dict(sizes=(784, 16, 10), epochs=1, train_size=500, val_size=100, test_size=100)


def test_info_names_the_whole_recipe(tmp_path, mnist_dir):
    recipe = dict(optimizer="nesterov", momentum=0.8, lr=0.05, schedule="cosine", warmup=1, dropout=0.1, max_norm=4.0)
    cfg = gpumlp.TrainConfig(**SMALL, **recipe, activation="relu", loss="ce", augment="shift", batch_size=50)
    gpumlp.run(cfg, data_dir=mnist_dir, save=tmp_path / "r.npz", log=lambda m: None)
    out = CliRunner().invoke(cli.app, ["info", str(tmp_path / "r.npz")])
    assert out.exit_code == 0, out.output
    recipe = next(line for line in out.output.splitlines() if line.startswith("recipe"))
    for part in ("nesterov lr 0.05", "cosine", "1 warm-up epoch", "dropout 0.1", "max-norm 4", "augment shift",
                 "momentum 0.8"):  # fmt: skip
        assert part in recipe, recipe


def test_info_says_where_a_converted_network_came_from(tmp_path, mnist_dir):
    gpumlp.run(gpumlp.TrainConfig(**SMALL), data_dir=mnist_dir, save=tmp_path / "r.npz", log=lambda m: None)
    runner = CliRunner()
    for args in (["r.npz", "rust.json", "--to", "rust"], ["rust.json", "back.npz"]):
        result = runner.invoke(cli.app, ["convert", *(str(tmp_path / a) if "." in a else a for a in args)])
        assert result.exit_code == 0, result.output
    out = runner.invoke(cli.app, ["info", str(tmp_path / "back.npz")])
    assert out.exit_code == 0, out.output
    assert any(line.startswith("imported from") and "rust" in line for line in out.output.splitlines()), out.output


def test_info_says_below_what_confidence_the_network_is_not_sure(tmp_path, mnist_dir):
    """A trained file's own floor (chosen on its 100 validation images), and the default for a file
    saved without one."""
    gpumlp.run(gpumlp.TrainConfig(**SMALL), data_dir=mnist_dir, save=tmp_path / "r.npz", log=lambda m: None)
    model, _ = gpumlp.load(tmp_path / "r.npz")
    gpumlp.save(tmp_path / "plain.npz", model)
    rows = {}
    for name in ("r.npz", "plain.npz"):
        out = CliRunner().invoke(cli.app, ["info", str(tmp_path / name)])
        assert out.exit_code == 0, out.output
        rows[name] = next(line for line in out.output.splitlines() if line.startswith("not sure below"))
    floor = checkpoint.read_metadata(tmp_path / "r.npz")["confidence_floor"]["value"]
    assert f"{100 * floor:.1f}% top confidence (1% of its 100 validation images fall below)" in rows["r.npz"]
    assert "50% top confidence (the default: the file has no floor of its own)" in rows["plain.npz"]
