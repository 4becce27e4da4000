"""Pictures: real PNG files of the right size that are not blank, one-line errors for bad metrics
files, and the install hint when matplotlib is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from gpumlp.cli import plot, report
from gpumlp.errors import GpumlpError
from gpumlp.formats.checkpoint import load

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path, width: int, height: int) -> np.ndarray:
    """A real PNG of ``width`` × ``height`` pixels with something drawn on it; returns its pixels."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 5_000 < len(data) < 200_000
    pixels = matplotlib.image.imread(path)  # (height, width, 4) RGBA in [0, 1]
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05  # not a blank page
    return pixels


def write_metrics(path: Path, epochs: int = 5, validation: bool = True) -> Path:
    rows = []
    for e in range(1, epochs + 1):
        rows.append(
            {"epoch": e, "train_loss": 0.5 / e, "val_loss": 0.6 / e if validation else None,
             "val_accuracy": 0.9 + 0.01 * e if validation else None, "lr": 0.1, "seconds": 1.0,
             "images_per_s": 50_000.0}
        )  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def real_report(mnist):
    """The shipped network's report on the 10000 real test images, and those images."""
    _, _, X_test, y_test = mnist
    model, _ = load(SHIPPED)
    return report.test_report(model, X_test, y_test, n_mistakes=10), X_test


def test_plot_runs_overlays_several_runs(tmp_path):
    files = [write_metrics(tmp_path / "a.metrics.jsonl"), write_metrics(tmp_path / "b.metrics.jsonl", epochs=3)]
    out = plot.plot_runs(files, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    check_png(out, 11 * plot.DPI, round(4.4 * plot.DPI))


def test_plot_runs_without_validation_still_draws_the_loss(tmp_path):
    f = write_metrics(tmp_path / "noval.metrics.jsonl", validation=False)
    check_png(plot.plot_runs([f], tmp_path / "sub" / "curves.png"), 11 * plot.DPI, round(4.4 * plot.DPI))


def test_run_name_is_the_file_stem_without_metrics():
    assert plot.run_name(Path("runs/784-100-10-relu-ce.metrics.jsonl")) == "784-100-10-relu-ce"
    assert plot.run_name("x.jsonl") == "x"


def test_plot_confusion(tmp_path, real_report):
    r, _ = real_report
    check_png(plot.plot_confusion(r, tmp_path / "confusion.png"), round(7.2 * plot.DPI), round(6.2 * plot.DPI))


def test_plot_mistakes(tmp_path, real_report):
    r, X = real_report
    pixels = check_png(plot.plot_mistakes(r, X, tmp_path / "mistakes.png"), 10 * plot.DPI, 5 * plot.DPI)
    assert pixels[..., :3].min() < 0.1  # black ink of the digits (gray_r: 1.0 → black)
    one_row = plot.plot_mistakes(r, X, tmp_path / "row.png", cols=10)
    check_png(one_row, 20 * plot.DPI, round(2.75 * plot.DPI))


def test_plot_mistakes_with_no_mistakes_says_so(tmp_path, real_report):
    r, X = real_report
    out = plot.plot_mistakes(dict(r, mistakes=[]), X, tmp_path / "none.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    ("X", "fragment"),
    [(np.zeros((10, 28, 28)), r"shape \(n, 784\)"), (np.zeros((5, 784)), "the report names image")],
)
def test_plot_mistakes_checks_its_images(tmp_path, real_report, X, fragment):
    r, _ = real_report
    with pytest.raises(GpumlpError, match=fragment):
        plot.plot_mistakes(r, X, tmp_path / "m.png")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "is empty: no epochs to plot"),
        ("\n  \n", "is empty: no epochs to plot"),
        ('{"epoch": 1, "train_loss": 0.5}\nnot json\n', "line 2: not valid JSON"),
        ("[1, 2]\n", "line 1: expected a JSON object per epoch, got list"),
        ('{"epoch": 1, "train_loss": 0.5}\n{"epoch": 2}\n', "line 2: no 'train_loss'"),
        ('{"epoch": 1, "train_loss": "low"}\n', "line 1: train_loss is 'low', expected a number"),
        ('{"epoch": true, "train_loss": 0.1}\n', "line 1: epoch is True, expected a number"),
        ('{"epoch": 1, "train_loss": 0.1, "val_accuracy": "95%"}\n', "line 1: val_accuracy is '95%'"),
    ],
)
def test_malformed_metrics_files_are_one_line_errors(tmp_path, content, fragment):
    f = tmp_path / "bad.metrics.jsonl"
    f.write_text(content)
    with pytest.raises(GpumlpError, match=fragment) as e:
        plot.plot_runs([f], tmp_path / "out.png")
    assert "\n" not in str(e.value) and str(f) in str(e.value)
    assert not (tmp_path / "out.png").exists()


def test_missing_or_unreadable_metrics_files(tmp_path):
    for path, fragment in [
        (tmp_path / "nope.metrics.jsonl", "not found"),
        (tmp_path, "is a directory, not a regular file"),
    ]:
        with pytest.raises(GpumlpError, match=fragment) as e:
            plot.plot_runs([path], tmp_path / "out.png")
        assert "\n" not in str(e.value)
    (tmp_path / "latin1.metrics.jsonl").write_bytes(b"\xff\xfe")
    with pytest.raises(GpumlpError, match="cannot read metrics file"):
        plot.plot_runs([tmp_path / "latin1.metrics.jsonl"], tmp_path / "out.png")
    with pytest.raises(GpumlpError, match="no metrics files given"):
        plot.plot_runs([], tmp_path / "out.png")


def test_a_fifo_or_a_huge_number_in_place_of_metrics_is_one_line(tmp_path):
    """A FIFO is refused at once (reading it waited forever); a 400-digit number is not a float."""
    import os

    os.mkfifo(tmp_path / "pipe.metrics.jsonl")
    with pytest.raises(GpumlpError, match="is a FIFO"):
        plot.plot_runs([tmp_path / "pipe.metrics.jsonl"], tmp_path / "out.png")
    (tmp_path / "big.metrics.jsonl").write_text('{"epoch": 1, "train_loss": ' + "9" * 400 + "}\n")
    with pytest.raises(GpumlpError, match="train_loss is 9999"):
        plot.plot_runs([tmp_path / "big.metrics.jsonl"], tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_unwritable_output_is_one_line_error(tmp_path):
    (tmp_path / "a_file").write_text("")
    f = write_metrics(tmp_path / "a.metrics.jsonl")
    with pytest.raises(GpumlpError, match="cannot write") as e:
        plot.plot_runs([f], tmp_path / "a_file" / "curves.png")  # a file where a folder should be
    assert "\n" not in str(e.value)


def test_without_matplotlib_every_plot_names_the_extra(tmp_path, monkeypatch, real_report):
    # As if matplotlib were not installed: importing it, or any part of it, raises ImportError.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r, X = real_report
    f = write_metrics(tmp_path / "a.metrics.jsonl")
    for draw in (
        lambda: plot.plot_runs([f], tmp_path / "c.png"),
        lambda: plot.plot_confusion(r, tmp_path / "m.png"),
        lambda: plot.plot_mistakes(r, X, tmp_path / "x.png"),
    ):
        with pytest.raises(GpumlpError) as e:
            draw()
        assert str(e.value) == "plotting needs matplotlib: pip install 'gpumlp[plot]'"
    assert not list(tmp_path.glob("*.png"))


# ---------------------------------------------------------------- gpumlp show: first-layer weights


def test_plot_weights_draws_each_unit_upright_red_positive_blue_negative(tmp_path):
    """One unit whose weights are +1 on the top half of the 28×28 field and −1 below: the picture
    must be red above and blue below (a transposed reshape would split it left/right instead)."""
    from gpumlp.model import MLP

    model = MLP((784, 1, 10), "sigmoid", "mse")
    w = np.where(np.arange(784) < 392, 1.0, -1.0)  # rows 0–13 positive, rows 14–27 negative
    model.params["W0"][:, 0] = w
    pixels = check_png(plot.plot_weights(model, tmp_path / "w.png"), round(5.0 * plot.DPI), round(1.5 * plot.DPI))
    rgb = pixels[..., :3]
    coloured = np.abs(rgb[..., 0] - rgb[..., 2]) > 0.2  # deep red or blue: the image, not the title
    rows, cols = np.flatnonzero(coloured.any(axis=1)), np.flatnonzero(coloured.any(axis=0))
    at = lambda fy, fx: rgb[rows[0] + int(fy * (rows[-1] - rows[0])), cols[0] + int(fx * (cols[-1] - cols[0]))]  # noqa: E731
    for fy, fx, red in [(0.25, 0.25, True), (0.25, 0.75, True), (0.75, 0.25, False), (0.75, 0.75, False)]:
        r, _, b = at(fy, fx)
        assert (r > b + 0.2) if red else (b > r + 0.2), (fy, fx, r, b)


def test_show_draws_at_most_100_units(tmp_path, monkeypatch, capsys):
    from standins.entry_point import run_main

    code, out, err = run_main(monkeypatch, capsys, "show", str(SHIPPED), "--out", str(tmp_path / "w.png"))
    assert code == 0 and out == f"saved {tmp_path / 'w.png'}\n"
    data = (tmp_path / "w.png").read_bytes()
    assert data[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(tmp_path / "w.png")
    assert pixels.shape[:2] == (round(8.7 * plot.DPI), round(8 * plot.DPI))  # 10 × 10 tiles of 0.8 inch
    code, out, err = run_main(
        monkeypatch, capsys, "show", str(SHIPPED), "--units", "9", "--out", str(tmp_path / "9.png")
    )
    assert code == 0 and matplotlib.image.imread(tmp_path / "9.png").shape[:2] == (
        round(3.1 * plot.DPI),
        round(5.0 * plot.DPI),
    )


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--units", "0"], "--units must be between 1 and 100 (got 0)"),
        (["--units", "101"], "--units must be between 1 and 100 (got 101)"),
        (["--matplotlib-missing"], "plotting needs matplotlib: pip install 'gpumlp[plot]'"),
    ],
)
def test_show_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys, args, fragment):
    from standins.entry_point import run_main

    if args == ["--matplotlib-missing"]:
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        args = []
    code, out, err = run_main(monkeypatch, capsys, "show", str(SHIPPED), *args, "--out", str(tmp_path / "w.png"))
    assert code == 2 and err == f"error: {fragment}\n" and not (tmp_path / "w.png").exists()


def test_plot_without_out_never_replaces_an_existing_picture(tmp_path, monkeypatch, capsys):
    import sys

    from gpumlp.cli import commands as cli

    f = write_metrics(tmp_path / "a.metrics.jsonl")
    monkeypatch.chdir(tmp_path)
    said = []
    for argv in (["plot", str(f)], ["plot", str(f)], ["plot", str(f), "--out", "curves.png"]):
        monkeypatch.setattr(sys, "argv", ["gpumlp", *argv])
        with pytest.raises(SystemExit) as e:
            cli.main()
        assert e.value.code == 0
        said.append(capsys.readouterr().out)
    assert said == ["saved curves.png\n", "saved curves-2.png\n", "saved curves.png\n"]  # --out names it: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.metrics.jsonl", "curves-2.png", "curves.png"]


def test_show_without_out_never_replaces_an_existing_picture(tmp_path, monkeypatch, capsys):
    from standins.entry_point import run_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.png").write_bytes(b"an earlier picture")
    code, out, err = run_main(monkeypatch, capsys, "show", str(SHIPPED), "--units", "4")
    assert code == 0 and out == "saved weights-2.png\n"
    assert (tmp_path / "weights.png").read_bytes() == b"an earlier picture"
