"""Training output: a live bar on a terminal, plain lines elsewhere, JSON lines on request, and
the metrics file beside the checkpoint."""

from __future__ import annotations

import io
import json

import pytest
from typer.testing import CliRunner

from gpumlp.cli import commands as cli
from gpumlp.cli.display import TrainDisplay, choose_mode, epoch_line
from gpumlp.errors import ConfigError
from gpumlp.formats import checkpoint
from gpumlp.training.state import EpochStats

runner = CliRunner()
SMALL = ["--train-size", "3000", "--val-size", "500", "--test-size", "500", "--epochs", "3"]
STATS = EpochStats(2, 0.06461, 0.9268, 0.76, 3.0, 10, 0.05791, 71717.0)


def test_mode_follows_terminal_quiet_and_format():
    assert choose_mode("text", quiet=False, isatty=True) == "bar"
    assert choose_mode("text", quiet=False, isatty=False) == "plain"
    assert choose_mode("text", quiet=True, isatty=True) == "plain"
    assert choose_mode("json", quiet=False, isatty=True) == "json"
    with pytest.raises(ConfigError, match="unknown --log-format 'xml'"):
        choose_mode("xml", quiet=False)


def test_epoch_line():
    assert epoch_line(STATS, 30) == "epoch  2/30  loss 0.0646  val loss 0.0579  val acc  92.68%  lr 3  0.76s"


def test_bar_on_a_terminal_draws_then_leaves_the_summary_line():
    from rich.console import Console

    out = io.StringIO()
    show = TrainDisplay(30, 10, "bar", console=Console(file=out, force_terminal=True, width=120))
    for done in range(1, 101, 10):
        show.progress(2, done, 100, 0.0646)
    show.epoch(STATS)
    text = out.getvalue()
    assert "\x1b[" in text and "img/s" in text and "loss 0.0646" in text  # the live bar was drawn
    assert text.rstrip().endswith(epoch_line(STATS, 30))


def test_not_a_terminal_plain_lines_without_control_characters(tmp_path, mnist_dir):
    ckpt = tmp_path / "p.npz"
    result = runner.invoke(cli.app, ["train", *SMALL, "--data-dir", str(mnist_dir), "--save", str(ckpt)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\r" not in result.output
    lines = result.output.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]
    assert lines[-2].startswith("test accuracy") and lines[-1] == f"saved {ckpt}"


def test_json_log_format_is_one_object_per_line(tmp_path, mnist_dir):
    ckpt = tmp_path / "j.npz"
    args = ["train", *SMALL, "--log-format", "json", "--data-dir", str(mnist_dir), "--save", str(ckpt)]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["epoch", "epoch", "epoch", "done"]
    assert events[-1]["checkpoint"] == str(ckpt) and 0 < events[-1]["test_accuracy"] <= 1
    assert all(
        {"train_loss", "val_loss", "val_accuracy", "lr", "seconds", "images_per_s"} <= e.keys() for e in events[:3]
    )


def test_metrics_file_beside_the_checkpoint_matches_its_history(tmp_path, mnist_dir):
    ckpt = tmp_path / "run.npz"
    assert runner.invoke(cli.app, ["train", *SMALL, "--data-dir", str(mnist_dir), "--save", str(ckpt)]).exit_code == 0
    resumed = ["train", "--resume", str(ckpt), "--epochs", "5", "--lr", "1.0", "--data-dir", str(mnist_dir)]
    assert runner.invoke(cli.app, resumed).exit_code == 0
    rows = [json.loads(line) for line in (tmp_path / "run.npz.metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5] and [r["lr"] for r in rows] == [3.0] * 3 + [1.0] * 2
    for r in rows:
        assert set(r) >= {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds", "images_per_s"}
        assert r["images_per_s"] > 0 and 0 <= r["val_accuracy"] <= 1 and r["val_loss"] > 0
    assert rows == checkpoint.read_metadata(ckpt)["history"]
