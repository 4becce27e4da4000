"""A small CLI run of a variant added in a test (a loss, an activation): trained 1 epoch and
resumed to 2 on one path, and trained 2 epochs straight on another, for bit-for-bit comparison."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from gpumlp.cli import commands as cli
from gpumlp.formats import checkpoint

runner = CliRunner()


def invoke(args: list[str]):
    """``gpumlp ARGS`` in process; the run must succeed."""
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    return result


def train_args(mnist_dir, save, epochs: int, *options: str) -> list[str]:
    """784-24-10 at lr 0.1, batch 32, 3,000 training and 500 validation images, plus ``options``."""
    return ["train", *options, "--layers", "784,24,10", "--lr", "0.1", "--batch-size", "32",
            "--epochs", str(epochs), "--train-size", "3000", "--val-size", "500", "--test-size", "0",
            "--data-dir", str(mnist_dir), "--save", str(save), "--quiet"]  # fmt: skip


def resumed_and_straight(mnist_dir, folder: Path, *options: str):
    """``(part, resumed, meta, straight)``: ``part`` saved after 1 epoch and resumed to 2 (its network
    and metadata), and the network of an uninterrupted 2-epoch run with the same ``options``."""
    part, whole = folder / "part.npz", folder / "whole.npz"
    invoke(train_args(mnist_dir, part, 1, *options))
    invoke(["train", "--resume", str(part), "--epochs", "2", "--data-dir", str(mnist_dir), "--save", str(part)])
    invoke(train_args(mnist_dir, whole, 2, *options))
    resumed, meta = checkpoint.load(part)
    straight, _ = checkpoint.load(whole)
    return part, resumed, meta, straight
