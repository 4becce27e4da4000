"""The ``gpumlp`` commands: parse options, call the library, print. No math here.

Every error a user can cause (a ``GpumlpError`` or a bad option) becomes one line on stderr and
exit code 2, without a traceback. The app, the shared option types, that error handling and the
entry point are in ``gpumlp/cli/app.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpumlp.cli import sweep as _sweep  # noqa: F401  (registers gpumlp sweep)
from gpumlp.cli.app import (  # noqa: F401  (app and main: the entry points, re-exported)
    AnyDatasetOpt,
    CheckpointArg,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    JsonOpt,
    PlotDirOpt,
    TestSizeOpt,
    app,
    command,
    echo_json,
    interrupted,
    main,
    png_out,
    train_arguments,
    train_command,
)


def train_cli(ctx: typer.Context, **kw):
    """Train a network on MNIST, validating after each epoch; test it once and save it."""
    from gpumlp.cli.display import TrainDisplay, choose_mode
    from gpumlp.formats.signals import exit_code, why
    from gpumlp.training.run import run, train_settings
    from gpumlp.training.runfiles import TrainingInterrupted

    run_args, options, given = train_arguments(ctx, kw)
    resume = run_args["resume"]
    try:
        preset = options.pop("preset")
        cfg, threads, threads_from = train_settings(
            options, given, preset, resume, run_args["config"], run_args["threads"]
        )
        with TrainDisplay(cfg.epochs, cfg.batch_size, choose_mode(run_args["log_format"], run_args["quiet"])) as show:
            result = run(  # turns every Ctrl-C, from here on, into TrainingInterrupted
                cfg, data_dir=run_args["data_dir"], save=run_args["save"], log=show.log, on_epoch=show.epoch,
                resume=resume, save_every=run_args["save_every"], threads=threads, threads_from=threads_from,
                on_progress=show.progress if show.mode == "bar" else None,
            )  # fmt: skip
    except TrainingInterrupted as e:  # Ctrl-C, SIGTERM, SIGHUP, a closed output: every epoch saved
        raise interrupted(str(e), e.exit_code) from None
    except KeyboardInterrupt as e:  # before run() started
        raise interrupted(f"{why(e)} before training started: nothing to save", exit_code(e)) from None
    try:
        show.done(result.test_accuracy, cfg.test_size, result.checkpoint)
    except KeyboardInterrupt as e:  # the output closed at the very end
        raise interrupted(f"{why(e)} after the run: it is saved in {result.checkpoint}", exit_code(e)) from None


train_command(train_cli)


@command("test")
def test_cli(
    checkpoint: CheckpointArg,
    device: DeviceOpt = "cpu",
    data_dir: DataDirOpt = None,
    test_size: TestSizeOpt = 10_000,
    as_json: JsonOpt = False,
    mistakes: Annotated[int, typer.Option(help="How many of the most confident mistakes to list.")] = 10,
    plot_dir: PlotDirOpt = None,
    dataset: DatasetOpt = None,
    any_dataset: AnyDatasetOpt = False,
):
    """Accuracy, per-class scores, confusion matrix and most confident mistakes on the checkpoint's test set."""
    from gpumlp.cli.report import checkpoint_report, format_report

    report, model, rec, X = checkpoint_report(
        checkpoint, device, data_dir, test_size, mistakes, dataset, any_dataset,
        note=lambda text: typer.echo(text, err=as_json),  # --json keeps stdout one JSON document
    )  # fmt: skip
    saved = []
    if plot_dir is not None:
        from gpumlp.cli.outputs import own_png
        from gpumlp.cli.plot import plot_confusion, plot_mistakes

        # a folder the user named: replace only gpumlp's own pictures there, else confusion-2.png, …
        saved = [plot_confusion(report, own_png(plot_dir / "confusion.png")),
                 plot_mistakes(report, X, own_png(plot_dir / "mistakes.png"))]  # fmt: skip
    if as_json:
        echo_json(dict(report, checkpoint=str(checkpoint), model=repr(model), dataset=rec.name))
    else:
        typer.echo(f"{checkpoint}: {model}")
        typer.echo(format_report(report))
    for path in saved:
        typer.echo(f"saved {path}", err=as_json)


@command("plot")
def plot_cli(
    runs: Annotated[
        list[Path], typer.Argument(help="One or more <name>.metrics.jsonl files written by training runs.")
    ],
    out: png_out("curves.png") = None,
):
    """Loss and validation accuracy per epoch of one or more training runs, overlaid, as a PNG."""
    from gpumlp.cli.outputs import check_png_out
    from gpumlp.cli.plot import plot_runs
    from gpumlp.formats.atomic import free_path

    path = plot_runs(runs, check_png_out(out, runs) if out is not None else free_path("curves.png"))
    typer.echo(f"saved {path}")


@command("convert")
def convert_cli(
    source: CheckpointArg,
    target: Annotated[Path, typer.Argument(help="The file to write: .npz or .json (gpumlp), else as --to names it.")],
    to: Annotated[str, typer.Option(help="The format to write: {formats}.")] = "gpumlp",
):
    """Convert a network between .npz and .json, or to or from another format (the Rust project's, Nielsen's JSON)."""
    from gpumlp.formats.checkpoint import convert

    model = convert(source, target, to)
    typer.echo(f"{source} → {target} ({to}): {model}")


@command("info")
def info_cli(
    checkpoint: CheckpointArg,
    as_json: JsonOpt = False,
):
    """Architecture, parameter count, training configuration, history and accuracy of a checkpoint."""
    from gpumlp.cli.info import info_rows
    from gpumlp.formats.checkpoint import describe

    d = describe(checkpoint)
    if as_json:
        return echo_json(d)
    for key, value in info_rows(d):
        typer.echo(f"{key:<15}{value}")


@command("predict")
def predict_cli(
    checkpoint: CheckpointArg,
    images: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="IMAGE",
            help="Image files (PNG, JPEG, BMP, …), one digit each, any size, dark on light or light on dark.",
        ),
    ] = None,
    index: Annotated[
        list[int] | None, typer.Option("--index", metavar="N", help="Also predict MNIST test image N (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
    preview: Annotated[
        bool | None,
        typer.Option(
            "--preview/--no-preview",
            help="Show the 28×28 input the network saw, as text. Default: for up to 3 images, not for more.",
            show_default=False,
        ),
    ] = None,
    save_input: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Also save each image's 28×28 input as DIR/<image name>.png (white on black, as MNIST).",
        ),
    ] = None,
    device: DeviceOpt = "cpu",
    data_dir: DataDirOpt = None,
    dataset: DatasetOpt = None,
    any_dataset: AnyDatasetOpt = False,
):
    """Which digit is in each image: prediction, top-3 probabilities and the 28×28 input the network saw."""
    from gpumlp.cli.predict import format_predictions, predict_files, save_inputs

    run = predict_files(
        checkpoint, images or [], index or [], device, data_dir, dataset, any_dataset,
        note=lambda text: typer.echo(text, err=True),
    )  # fmt: skip
    # a folder the user named: replace only gpumlp's own pictures there, never an input image
    saved = save_inputs(run, save_input, tuple(images or ())) if save_input is not None else []
    if as_json:
        echo_json({"checkpoint": str(checkpoint), **run.as_json()})
    else:
        typer.echo(format_predictions(run, preview))
    for path in saved:
        typer.echo(f"saved {path}", err=as_json)  # --json keeps stdout one JSON document


@command("bench")
def bench_cli(
    device: DeviceOpt = "cpu",
    repeats: Annotated[
        int, typer.Option(min=1, help="Timed runs per configuration after one warm-up; the median counts.")
    ] = 5,
    data_dir: DataDirOpt = None,
    extras: Annotated[
        bool,
        typer.Option(
            help="Also measure, in fresh processes, a training run's peak memory, --help and load_mnist() times."
        ),
    ] = True,  # fmt: skip
    as_json: JsonOpt = False,
    dataset: Annotated[str, typer.Option(help="The images to time on: {datasets}.")] = "mnist",
    cuda_graph: Annotated[
        bool,
        typer.Option(
            "--cuda-graph",
            help="On CUDA, train each row whose recipe allows it with --cuda-graph (one launch a batch).",
        ),
    ] = False,  # fmt: skip
):
    """Training speed: images/s, s/epoch and GFLOP/s over a matrix of networks, against the computer's own sgemm."""
    from gpumlp.cli.bench import format_bench, run_bench

    result = run_bench(device, repeats, data_dir=data_dir, extras=extras, dataset=dataset, cuda_graph=cuda_graph)
    echo_json(result) if as_json else typer.echo(format_bench(result))


@command("devices")
def devices_cli(
    as_json: JsonOpt = False,
):
    """numpy and its BLAS (Intel MKL if installed), CuPy and CUDA, every GPU, and what --device auto would choose."""
    from gpumlp.cli.devices import describe_devices, format_devices

    d = describe_devices()
    echo_json(d) if as_json else typer.echo(format_devices(d))


@command("export")
def export_cli(
    checkpoint: CheckpointArg,
    target: Annotated[Path, typer.Argument(help="The .onnx file to write.")],
):
    """Write the network as an ONNX graph: raw pixels 0–255 in, the ten probabilities of gpumlp predict out."""
    from gpumlp.formats.export import export

    model, path = export(checkpoint, target)
    typer.echo(f"{checkpoint} → {path} (ONNX): {model}; input 'pixels' (batch, 784) 0–255, output 'probabilities'")


@command("serve")
def serve_cli(
    checkpoint: CheckpointArg,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = 8000,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(help="Another name the server answers to (repeatable; '*': any, behind a proxy)."),
    ] = None,
    header_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a request's headers may take.")] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds an upload's body may take (and answers may wait unread).")
    ] = 30.0,
    max_connections: Annotated[int, typer.Option(min=1, help="Open connections at once; more get 503.")] = 512,
):
    """A page to draw digits on and watch the network's answer, and its HTTP API (POST /api/predict)."""
    from gpumlp.cli.serve import Limits, serve

    limits = Limits(header_timeout=header_timeout, body_timeout=body_timeout, max_connections=max_connections)
    try:
        serve(checkpoint, host, port, lambda message: typer.echo(message, err=True), limits, tuple(allow_host or ()))
    except KeyboardInterrupt:  # uvicorn has already shut down cleanly, then re-raised Ctrl-C
        typer.echo("stopped", err=True)


@command("show")
def show_cli(
    checkpoint: CheckpointArg,
    out: png_out("weights.png") = None,
    units: Annotated[int, typer.Option(help="How many first-layer units to draw (at most 100).")] = 100,
):
    """The first layer's weights as 28×28 images: what each hidden unit looks for (needs matplotlib)."""
    from gpumlp.cli.outputs import check_png_out
    from gpumlp.cli.plot import plot_weights
    from gpumlp.formats.atomic import free_path
    from gpumlp.formats.checkpoint import load

    out = check_png_out(out, [checkpoint]) if out is not None else None  # before the network is read
    model, _ = load(checkpoint)
    path = plot_weights(model, out if out is not None else free_path("weights.png"), units)
    typer.echo(f"saved {path}")
