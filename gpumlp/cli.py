"""The ``gpumlp`` command: parse options, call the library, print. No math here.

Every error a user can cause (a ``GpumlpError`` or a bad option) becomes one line on stderr and
exit code 2, without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gpumlp.errors import GpumlpError

# typer re-exports BadParameter from the click it runs on (click itself, or the copy vendored in
# recent typer); its base class is that click's UsageError, shared by every bad-option error.
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help="A from-scratch multilayer perceptron for MNIST, on numpy (CPU) or CuPy (CUDA GPU).",
)

DeviceOpt = Annotated[
    str, typer.Option("--device", "-d", help="auto, cpu, cuda or cuda:N (auto: CUDA if usable, else CPU).")
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="Folder with the MNIST files; else $GPUMLP_DATA_DIR, else ~/.cache/gpumlp/mnist (downloaded if missing)."
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@app.command("train")
def train_cli(
    device: DeviceOpt = "cpu",
    layers: Annotated[str, typer.Option(help="Layer sizes, 784 inputs first and 10 classes last.")] = "784,16,16,10",
    activation: Annotated[str, typer.Option(help="Hidden activation: sigmoid, relu or tanh.")] = "sigmoid",
    loss: Annotated[str, typer.Option(help="mse (sigmoid outputs, ½‖a−y‖²) or ce (softmax, cross-entropy).")] = "mse",
    init: Annotated[
        str | None,
        typer.Option(
            help="Weights: normal N(0,1), lecun, he or xavier. Default: xavier for sigmoid/tanh, he for relu."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training images.")] = 30,
    batch_size: Annotated[int, typer.Option(help="Images per SGD step; the loss is their mean.")] = 10,
    lr: Annotated[float, typer.Option(help="Learning rate η of SGD.")] = 3.0,
    train_size: Annotated[int, typer.Option(help="Training images, from the start of the training file.")] = 50_000,
    val_size: Annotated[
        int, typer.Option(help="Validation images, right after the training images (0: none).")
    ] = 10_000,
    test_size: Annotated[int, typer.Option(help="Test images, from the start of the test file (0: no test).")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights and of the batch order.")] = 0,
    dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    data_dir: DataDirOpt = None,
    save: Annotated[
        Path | None,
        typer.Option(help="Checkpoint to write (.npz or .json). Default: checkpoints/LAYERS-ACTIVATION-LOSS.npz."),
    ] = None,
):
    """Train a network on MNIST, validating after each epoch; test it once and save it."""
    from gpumlp.train import TrainConfig, run

    try:
        cfg = TrainConfig(
            sizes=layers, activation=activation, loss=loss, init=init, epochs=epochs,
            batch_size=batch_size, lr=lr, train_size=train_size, val_size=val_size,
            test_size=test_size, seed=seed, dtype=dtype, device=device,
        )  # fmt: skip
        result = run(cfg, data_dir=data_dir, save=save, log=typer.echo, on_epoch=_print_epoch(cfg.epochs))
    except GpumlpError as e:
        raise _fail(str(e)) from None
    if result.test_accuracy is not None:
        typer.echo(f"test accuracy {100 * result.test_accuracy:.2f}% ({cfg.test_size} images)")
    if result.checkpoint is not None:
        typer.echo(f"saved {result.checkpoint}")


def _print_epoch(total: int):
    width = len(str(total))

    def show(s) -> None:
        val = f"  val acc {100 * s.val_accuracy:6.2f}%" if s.val_accuracy is not None else ""
        typer.echo(f"epoch {s.epoch:>{width}}/{total}  loss {s.train_loss:.4f}{val}  {s.seconds:.2f}s")

    return show


@app.command("test")
def test_cli(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by gpumlp train (.npz or .json).")],
    device: DeviceOpt = "cpu",
    data_dir: DataDirOpt = None,
    test_size: Annotated[int, typer.Option(help="Test images, from the start of the test file.")] = 10_000,
):
    """Accuracy of a saved network on the MNIST test set."""
    from gpumlp import checkpoint as ckpt
    from gpumlp.data import load_mnist, split
    from gpumlp.train import evaluate

    try:
        model, meta = ckpt.load(checkpoint, device=device)
        if model.be.note:
            typer.echo(model.be.note)
        data = load_mnist(data_dir)
        _, _, (X, y) = split(*data, 0, 0, test_size)
        acc = evaluate(model, X, y)
    except GpumlpError as e:
        raise _fail(str(e)) from None
    typer.echo(f"{checkpoint}: {model}")
    typer.echo(f"test accuracy {100 * acc:.2f}% ({len(X)} images)")


def main() -> None:
    """Entry point: run the app, turning option errors into one line and exit code 2."""
    args = sys.argv[1:] or ["--help"]
    try:
        rc = app(args=args, prog_name="gpumlp", standalone_mode=False)  # a typer.Exit's code, or None
    except UsageError as e:  # bad, missing or unknown option, unknown command
        ctx = getattr(e, "ctx", None)
        where = f"gpumlp {ctx.info_name} --help" if ctx is not None and ctx.parent is not None else "gpumlp --help"
        typer.echo(f"error: {e.format_message()} (see {where})", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)
