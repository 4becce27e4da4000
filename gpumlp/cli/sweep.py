"""``gpumlp sweep``: hyper-parameter searches on Optuna (the library is ``gpumlp/sweep/``).

``run`` searches a space file's options in a study (SQLite by default, any number of processes
and machines with PostgreSQL), ``show`` says what a study found, ``best`` writes its best trial's
options as a file ``gpumlp train --config`` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpumlp.cli.app import DataDirOpt, DeviceOpt, Group, JsonOpt, app, command, completion, echo_json, interrupted
from gpumlp.sweep import KEEP, PRUNERS

sweep_app = typer.Typer(
    cls=Group,
    help="Search training options with Optuna: studies in SQLite, or PostgreSQL shared by many machines.",
    no_args_is_help=True,
)
app.add_typer(sweep_app, name="sweep")

StudyArg = Annotated[str, typer.Argument(help="The study's name.")]
StorageOpt = Annotated[
    str | None,
    typer.Option(help="The study's database: an Optuna storage URL (sqlite:///FILE, postgresql://USER@HOST/DB). "
                 "Default: sweeps/STUDY.db."),
]  # fmt: skip


@command("run", on=sweep_app)
def run_cli(
    space_file: Annotated[
        Path,
        typer.Argument(metavar="SPACE.toml", help="TOML: \\[fixed] and \\[search] tables of gpumlp train options."),
    ],  # fmt: skip
    study: Annotated[str, typer.Option(help="The study to create or join (its name in the storage).")],
    storage: StorageOpt = None,
    trials: Annotated[int, typer.Option(help="Finished trials (complete or pruned) the study ends with, in all.")] = 20,
    jobs: Annotated[int, typer.Option(help="Worker processes here, each with its share of the cores.")] = 1,
    heartbeat: Annotated[
        int | None,
        typer.Option(
            help="Seconds between a running trial's heartbeats; a trial silent for two is failed and retried once. "
            "Set when the study is created (default 30); every later command keeps it."
        ),
    ] = None,  # fmt: skip
    pruner: Annotated[
        str,
        typer.Option(
            help="Stops poor trials early: median, halving or none.", autocompletion=completion(lambda: PRUNERS)
        ),
    ] = "median",
    keep: Annotated[
        str,
        typer.Option(
            help="Networks kept in sweeps/STUDY/: best, all or none.", autocompletion=completion(lambda: KEEP)
        ),
    ] = "best",
    device: DeviceOpt = "cpu",
    data_dir: DataDirOpt = None,
):
    """Search the options of a space file: trials trained on the training images, scored on the validation images."""
    from gpumlp import sweep

    sweep.require()
    from gpumlp.sweep.run import SweepInterrupted, check_options, run_sweep
    from gpumlp.sweep.space import read_space
    from gpumlp.sweep.study import check_name, shown, storage_url

    space = read_space(space_file)  # every error in it and in the options before anything is created
    check_options(trials, jobs, heartbeat, keep, device)
    url = storage_url(storage, check_name(study))
    show = SweepDisplay()
    try:
        with show:
            last = run_sweep(space, study, url, trials, jobs=jobs, heartbeat=heartbeat, pruner=pruner, keep=keep,
                             device=device, data_dir=data_dir, on_progress=show.update, log=show.log)  # fmt: skip
    except SweepInterrupted as e:
        raise interrupted(str(e), e.exit_code) from None
    show.done(f"gpumlp sweep show {study}" + (f" --storage {shown(url)}" if storage is not None else ""), last)


class SweepDisplay:
    """A live status line on a terminal; elsewhere one line per finished trial."""

    def __init__(self):
        import sys

        self.live = None
        self.terminal = sys.stdout.isatty()

    def __enter__(self):
        if self.terminal:
            from rich.live import Live

            self.live = Live("starting…", auto_refresh=False, transient=True)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def log(self, line: str) -> None:
        from gpumlp.cli.display import echo

        if self.live is not None:
            self.live.console.print(line, highlight=False)  # above the status line
        else:
            echo(line)

    def update(self, progress) -> None:
        from gpumlp.cli.display import echo
        from gpumlp.sweep.report import status_line, trial_line

        if self.live is not None:
            self.live.update(status_line(progress), refresh=True)
            return
        for t in progress.new:
            echo(trial_line(t, progress))

    def done(self, show: str, progress) -> None:
        from gpumlp.cli.display import echo
        from gpumlp.sweep.report import status_line

        echo(status_line(progress))
        echo(f"the best trials: {show}")


@command("show", on=sweep_app)
def show_cli(
    study: StudyArg,
    storage: StorageOpt = None,
    top: Annotated[int, typer.Option(min=1, help="How many of the best trials to list.")] = 10,
    plot_dir: Annotated[
        Path | None,
        typer.Option("--plot", help="Also save history.png and importance.png in this folder (needs matplotlib)."),
    ] = None,
    as_json: JsonOpt = False,
):
    """A study's best trials, the importance of each searched option, and where the best network is."""
    from gpumlp import sweep

    sweep.require()
    from gpumlp.sweep.report import format_summary, summary
    from gpumlp.sweep.study import open_storage, open_study, storage_url

    url = storage_url(storage, study, create=False)
    handle = open_study(open_storage(url), study)
    d = summary(handle, url, top)
    saved = []
    if plot_dir is not None:
        from gpumlp.cli.plot import plot_sweep
        from gpumlp.sweep.report import history_points

        saved = plot_sweep(history_points(handle), d["importances"], plot_dir)
    echo_json(d) if as_json else typer.echo(format_summary(d))
    for path in saved:
        typer.echo(f"saved {path}", err=as_json)


@command("best", on=sweep_app)
def best_cli(
    study: StudyArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="The TOML file to write (gpumlp train --config FILE).")],
    storage: StorageOpt = None,
):
    """Write the best trial's complete training options as a file for gpumlp train --config."""
    from gpumlp import sweep

    sweep.require()
    from gpumlp.sweep.report import best_options, write_best
    from gpumlp.sweep.study import open_storage, open_study, storage_url

    url = storage_url(storage, study, create=False)
    options, best = best_options(open_study(open_storage(url), study))
    path = write_best(out, options, study, best, url)
    typer.echo(
        f"{path}: trial {best.number} of {study}, val acc {100 * best.value:.2f}% (gpumlp train --config {path})"
    )
