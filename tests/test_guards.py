"""No command writes over its input, a running run's file, or a file it did not make; paths too
long, nested too deep or looping are one line; metrics files belong to one checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpumlp.errors import CheckpointError, DataError, GpumlpError
from gpumlp.formats import atomic, checkpoint
from standins.entry_point import run_main

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"
LONG = "a" * 300  # over every common file system's 255-byte name limit


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return Path(shutil.copy(SHIPPED, tmp_path / "v.npz"))


def metrics(path: Path, epochs: int = 3) -> Path:
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_accuracy": 0.5 + e / 10} for e in range(1, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:epochs]))
    return path


def one_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


# ---------------------------------------------------------------- outputs over inputs


def test_show_refuses_to_write_over_its_own_checkpoint(monkeypatch, capsys, ckpt):
    before = ckpt.read_bytes()
    code, _, err = run_main(monkeypatch, capsys, "show", str(ckpt), "--out", str(ckpt))
    one_error(code, err, "is the input")
    assert ckpt.read_bytes() == before


def test_plot_refuses_to_write_over_its_metrics_file(monkeypatch, capsys, tmp_path):
    m = metrics(tmp_path / "r.metrics.jsonl")
    before = m.read_bytes()
    code, _, err = run_main(monkeypatch, capsys, "plot", str(m), "--out", str(m))
    one_error(code, err, "is the input")
    assert m.read_bytes() == before


def test_an_out_that_is_not_a_png_is_refused_a_png_the_user_named_is_replaced(monkeypatch, capsys, tmp_path):
    m = metrics(tmp_path / "r.metrics.jsonl")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    code, _, err = run_main(monkeypatch, capsys, "plot", str(m), "--out", str(notes))
    one_error(code, err, "not a PNG")
    assert notes.read_text() == "mine"
    theirs = tmp_path / "theirs.png"
    theirs.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)  # a PNG, not gpumlp's: named, so replaced
    code, out, _ = run_main(monkeypatch, capsys, "plot", str(m), "--out", str(theirs))
    assert code == 0 and f"saved {theirs}" in out
    assert len(theirs.read_bytes()) > 1000


def test_show_plot_convert_and_export_refuse_a_target_a_run_holds(monkeypatch, capsys, tmp_path, ckpt):
    m = metrics(tmp_path / "r.metrics.jsonl")
    commands = {
        "busy.png": ["plot", str(m), "--out"],
        "busy2.png": ["show", str(ckpt), "--out"],
        "busy.json": ["convert", str(ckpt)],
        "busy.onnx": ["export", str(ckpt)],
    }
    for name, args in commands.items():
        lock = atomic.RunLock(tmp_path / name)
        assert lock.acquire()
        try:  # flock: another open file description conflicts, in this process as in another
            code, _, err = run_main(monkeypatch, capsys, *args, str(tmp_path / name))
        finally:
            lock.release()
        one_error(code, err, "is saving to", f"pid {os.getpid()}")
        assert not (tmp_path / name).exists()


def test_convert_refuses_its_source_and_a_file_that_is_not_a_checkpoint(monkeypatch, capsys, tmp_path, ckpt):
    package = tmp_path / "package.json"
    package.write_text('{"name": "mine"}')
    code, _, err = run_main(monkeypatch, capsys, "convert", str(ckpt), str(package))
    one_error(code, err, "not a checkpoint", "choose another TARGET")
    assert package.read_text() == '{"name": "mine"}'
    code, _, err = run_main(monkeypatch, capsys, "convert", str(ckpt), str(ckpt))
    one_error(code, err, "is the checkpoint being converted")
    code, _, err = run_main(monkeypatch, capsys, "convert", str(ckpt), str(tmp_path / "v.txt"))
    one_error(code, err, "must end in")
    (tmp_path / "dir.json").mkdir()
    code, _, err = run_main(monkeypatch, capsys, "convert", str(ckpt), str(tmp_path / "dir.json"))
    one_error(code, err, "folder", "choose another TARGET")
    assert "--save" not in err  # convert has no --save
    code, _, _ = run_main(monkeypatch, capsys, "convert", str(ckpt), str(tmp_path / "w.json"))
    code, _, _ = run_main(monkeypatch, capsys, "convert", str(ckpt), str(tmp_path / "w.json"))
    assert code == 0  # a checkpoint it names is replaced


def test_test_plot_replaces_only_its_own_pictures(monkeypatch, capsys, tmp_path, ckpt, mnist_dir):
    from gpumlp.cli.outputs import written_by_gpumlp

    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "confusion.png").write_bytes(b"\x89PNG\r\n\x1a\nsomeone else's")
    args = ("test", str(ckpt), "--data-dir", str(mnist_dir), "--test-size", "200", "--plot", str(plots))
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    assert (plots / "confusion.png").read_bytes() == b"\x89PNG\r\n\x1a\nsomeone else's"
    assert written_by_gpumlp(plots / "confusion-2.png") and written_by_gpumlp(plots / "mistakes.png")
    code, _, _ = run_main(monkeypatch, capsys, *args)  # again: its own pictures are replaced
    assert code == 0
    assert sorted(p.name for p in plots.iterdir()) == ["confusion-2.png", "confusion.png", "mistakes.png"]


def test_a_json_run_after_an_npz_run_keeps_each_its_own_metrics(tmp_path, mnist_dir):
    from gpumlp.training.config import TrainConfig
    from gpumlp.training.run import run
    from gpumlp.training.runfiles import metrics_path

    cfg = dict(sizes=(784, 10), train_size=200, val_size=100, test_size=100, batch_size=20, epochs=2)
    run(TrainConfig(**cfg), mnist_dir, tmp_path / "run.npz", log=lambda *_: None)
    first = metrics_path(tmp_path / "run.npz").read_text()
    run(TrainConfig(**{**cfg, "epochs": 1, "seed": 5}), mnist_dir, tmp_path / "run.json", log=lambda *_: None)
    assert metrics_path(tmp_path / "run.npz").read_text() == first
    assert metrics_path(tmp_path / "run.json").read_text().count("\n") == 1
    assert metrics_path(tmp_path / "run.npz") != metrics_path(tmp_path / "run.json")
    pandas = pytest.importorskip("pandas")
    assert list(pandas.read_json(metrics_path(tmp_path / "run.npz"), lines=True)["epoch"]) == [1, 2]


# ---------------------------------------------------------------- bounds


def test_a_name_too_long_is_one_line_everywhere(monkeypatch, capsys, tmp_path, ckpt):
    with pytest.raises(CheckpointError, match="too long"):
        atomic.check_target(tmp_path / f"{LONG}.npz", "a checkpoint")
    monkeypatch.chdir(tmp_path)
    cases = [
        ("train", "--epochs", "1", "--save", f"{LONG}.npz"),
        ("export", str(ckpt), f"{LONG}.onnx"),
        ("test", str(ckpt), "--data-dir", LONG),
    ]
    for args in cases:
        code, _, err = run_main(monkeypatch, capsys, *args)
        one_error(code, err, "too long")
    for var in ("GPUMLP_DATA_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv("GPUMLP_DATA_DIR", raising=False)
        monkeypatch.setenv(var, str(tmp_path / LONG))
        code, _, err = run_main(monkeypatch, capsys, "test", str(ckpt))
        one_error(code, err, "too long")


def test_a_lock_in_a_path_of_thousands_of_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    deep = Path("/".join(["d"] * 2000)) / "m.npz"  # 4,000 characters, 2,000 levels
    lock = atomic.RunLock(deep)
    try:
        assert lock.acquire()
        lock.release()
        assert deep.parent.is_dir()
    finally:  # one level at a time: shutil.rmtree (pytest's clean-up) recurses once per level
        for level in deep.parents:
            if level.is_dir() and level != Path("."):
                level.rmdir()


def test_a_symlink_loop_says_so(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(CheckpointError, match="loop of symbolic links"):
        atomic.check_target(tmp_path / "a" / "m.npz", "a checkpoint")


def test_plot_of_a_name_with_dollars_and_of_deeply_nested_json(tmp_path):
    from gpumlp.cli import plot

    odd = metrics(tmp_path / "$\\frac$.metrics.jsonl")  # mathtext would fail to parse this label
    assert plot.plot_runs([odd], tmp_path / "o.png").stat().st_size > 1000
    deep = tmp_path / "deep.metrics.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(GpumlpError, match="nested too deeply"):
        plot.read_metrics(deep)


def test_plot_of_twenty_runs_keeps_the_axes_clear(tmp_path, monkeypatch):
    from gpumlp.cli import plot

    figures, save = [], plot._save
    monkeypatch.setattr(plot, "_save", lambda fig, out: (figures.append(fig), save(fig, out))[1])
    plot.plot_runs([metrics(tmp_path / f"run{i:02}.metrics.jsonl") for i in range(20)], tmp_path / "c.png")
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "the legend covers the axes"


def test_info_on_a_full_stdout_is_one_line(ckpt):
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "gpumlp", "info", str(ckpt)], stdout=full, stderr=subprocess.PIPE, text=True,
            timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot write the output: No space left on device")
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_a_failed_download_leaves_no_empty_cache_tree(tmp_path, monkeypatch, refused_url):
    from gpumlp.data.load import locate_mnist

    monkeypatch.delenv("GPUMLP_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="could not download"):
        locate_mnist(mirrors=[refused_url])
    assert not (tmp_path / "cache").exists()


def test_an_empty_home_does_not_put_the_cache_at_the_root(monkeypatch):
    from gpumlp.data.load import default_cache_dir

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "")
    try:
        where = default_cache_dir()
    except DataError as e:
        assert "GPUMLP_DATA_DIR" in str(e)
    else:
        assert where != Path("/.cache/gpumlp/mnist") and where.parts[1:2] != (".cache",)


# ---------------------------------------------------------------- resampling without an n-wide matrix


def _matrix_resize(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """The resampling to_mnist did before: an (n_out, n_in) matrix of overlaps, the oracle."""
    n_in = a.shape[axis]
    edges = np.arange(n_out + 1) * (n_in / n_out)
    j = np.arange(n_in)
    overlap = np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j)  # (n_out, n_in)
    weights = np.clip(overlap, 0.0, None) * (n_out / n_in)
    return np.moveaxis(np.tensordot(weights, np.moveaxis(a, axis, 0), axes=1), 0, axis)


def test_to_mnist_agrees_with_the_matrix_resampling_on_a_corpus(mnist, monkeypatch):
    from PIL import Image

    from gpumlp.data import images

    rng = np.random.default_rng(25)
    corpus = []
    for i in range(40):  # real digits at many sizes and aspect ratios, and noisy drawings
        digit = (mnist[2][i].reshape(28, 28) * 255).astype(np.uint8)
        h, w = (int(v) for v in rng.integers(8, 700, 2))
        corpus.append(np.asarray(Image.fromarray(digit).resize((w, h), Image.BILINEAR)))
        noisy = rng.random((int(rng.integers(3, 300)), int(rng.integers(3, 300))))
        noisy[1:-1, 1:-1] += rng.random(noisy[1:-1, 1:-1].shape) > 0.7
        corpus.append(np.clip(noisy, 0, 1))
    new = [images.to_mnist(g) for g in corpus]
    monkeypatch.setattr(images, "area_resize", _matrix_resize)
    old = [images.to_mnist(g) for g in corpus]
    assert max(float(np.abs(a - b).max()) for a, b in zip(new, old)) <= 1e-6


def test_to_mnist_of_a_long_thin_image_is_refused_before_any_copy_and_one_at_the_limit_is_read():
    """A 1×4,194,304 array (no file may decode to it: MAX_SIDE) is refused from its shape, before
    the float copy or a resize matrix (a 20-row one of it would be 671 MB); a line as long as
    MAX_SIDE is preprocessed like any digit."""
    import tracemalloc

    from gpumlp.data import images
    from gpumlp.errors import ConfigError

    g = np.zeros((1, 4_194_304), dtype=np.uint8)
    g[0, 1000:3_000_000] = 255
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="1×4194304"):
            images.to_mnist(g)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1e6, f"{peak / 1e6:.1f} MB"
    line = np.zeros((1, images.MAX_SIDE), dtype=np.uint8)
    line[0, 100:6000] = 255
    x = images.to_mnist(line)
    assert x.shape == (784,) and x.max() == 1.0


def test_a_float_tiff_in_zero_to_one_is_read_as_its_grey_levels(tmp_path):
    from PIL import Image

    from gpumlp.data.images import load_image

    pixels = np.ones((40, 30), dtype=np.float32)
    pixels[10:30, 12:18] = 0.0  # a dark stroke on white
    Image.fromarray(pixels, mode="F").save(tmp_path / "digit.tif")
    gray = load_image(tmp_path / "digit.tif")
    assert gray.min() == 0.0 and gray.max() == 1.0
    np.testing.assert_array_equal(gray, pixels)


def test_resuming_a_network_without_a_run_names_the_fix(tmp_path):
    from gpumlp.model import MLP
    from gpumlp.training.run import command_config

    checkpoint.save(tmp_path / "m.npz", MLP((784, 10)))  # sigmoid and mse: what the Rust project runs
    checkpoint.convert(tmp_path / "m.npz", tmp_path / "r.json", to="rust")
    with pytest.raises(GpumlpError, match="start a new run"):
        command_config({}, {"epochs": 3}, resume=tmp_path / "r.json")
