"""The typer app and what every ``gpumlp`` command shares: option types declared once, library
errors turned into one line (``command``), ``gpumlp train``'s options built from ``TrainConfig``,
and the entry point. The commands themselves are in ``gpumlp/cli/commands.py``, which registers them on
``app`` when it is imported (``gpumlp.cli.commands.main`` is the console script).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import functools
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from gpumlp.cli.display import LOG_FORMATS
from gpumlp.cli.live_help import LIVE_HELP, live_help
from gpumlp.errors import GpumlpError
from gpumlp.formats import signals

# typer re-exports BadParameter from the click it runs on (click itself, or the copy vendored in
# recent typer); its base class is that click's UsageError, shared by every bad-option error.
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _FlagsAsFlags:
    """typer 0.29's rich help prints every option's type, a flag's too (``--json <bool>``), though
    a flag takes no value (``--json true`` is refused). Its help shows an option's metavar, when it
    has one, in place of the type: an empty one for each flag shows nothing there. (Plain help and
    usage lines never print a flag's metavar.)"""

    def get_params(self, ctx):
        params = super().get_params(ctx)  # the command's, and its --help (typer makes that one late)
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
            template = getattr(p, "help_template", None) or getattr(p, "help", None)
            if template and any(key in template for key in LIVE_HELP):
                p.help_template, p.help = template, live_help(template)
        return params


class Group(_FlagsAsFlags, typer.core.TyperGroup):
    """The ``gpumlp`` group: flags shown as flags in its help."""


class Command(_FlagsAsFlags, typer.core.TyperCommand):
    """A ``gpumlp`` command: flags shown as flags in its help."""


class TrainCommand(Command):
    """``gpumlp train``: the help of each option made from ``TrainConfig`` when it is shown, so it
    names the losses and update rules registered then (``losses.register`` after import too)."""

    def get_params(self, ctx):
        from gpumlp.training.config import TrainConfig, help_of

        params = super().get_params(ctx)
        by_name = {f.metadata.get("name", f.name): f for f in dataclasses.fields(TrainConfig)}
        for p in params:
            if p.name in by_name:
                p.help = help_of(by_name[p.name])
        return params


app = typer.Typer(
    cls=Group,
    add_completion=True,  # gpumlp --install-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    help="A from-scratch multilayer perceptron for MNIST, on numpy (CPU) or CuPy (CUDA GPU).",
)


def _version(asked: bool) -> None:
    """``gpumlp --version``: the installed package's version, from its metadata."""
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("gpumlp")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from gpumlp import __version__ as number
        typer.echo(f"gpumlp {number}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", "-V", is_eager=True, callback=_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """gpumlp's own options, before a command (its help text is the app's)."""


def completion(choices, listed: bool = False):
    """typer's ``autocompletion`` for an option whose value is one of the names ``choices()``
    returns (the record its checks use); ``listed``: a comma list of them (``affine,el`` →
    ``affine,elastic``), each name once."""

    def complete(incomplete: str) -> list[str]:
        head, comma, last = incomplete.rpartition(",") if listed else ("", "", incomplete)
        taken = set(head.split(",")) if comma else set()
        if "none" in taken:  # none stands alone
            return []
        names = [n for n in choices() if n not in taken and not (comma and n == "none")]
        return [f"{head}{comma}{n}" for n in names if n.startswith(last)]

    return complete


def field_completion(name: str):
    """The completion of ``TrainConfig`` field ``name``'s option, for other commands' same option."""

    def choices():
        from gpumlp.training.config import DECLARED

        return DECLARED[name].metadata["choices"]()

    return completion(choices)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print everything as one JSON object, for scripts.")]
CheckpointArg = Annotated[
    Path, typer.Argument(help="A checkpoint: gpumlp .npz/.json, or a Rust-project or Nielsen network2 .json.")
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", "-d", help="auto, cpu, cuda or cuda:N (auto: CUDA if usable, else CPU).",
        autocompletion=field_completion("device"),
    ),
]  # fmt: skip
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="Folder with the dataset's files; else $GPUMLP_DATA_DIR, else ~/.cache/gpumlp/DATASET "
        "(downloaded if missing)."
    ),
]
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        help="{datasets}. Default: the one the checkpoint was trained on.", autocompletion=field_completion("dataset")
    ),
]
AnyDatasetOpt = Annotated[
    bool, typer.Option("--any-dataset", help="Allow a --dataset other than the one the checkpoint was trained on.")
]


TestSizeOpt = Annotated[int, typer.Option(min=1, help="Test images, from the start of the test file.")]
PlotDirOpt = Annotated[
    Path | None,
    typer.Option("--plot", help="Also save confusion.png and mistakes.png in this folder (needs matplotlib)."),
]


def png_out(default: str):
    """``--out/-o``: the PNG a command writes, by default ``default`` (or ``-2``, … if it exists)."""
    stem, suffix = default.rsplit(".", 1)
    help = f"The PNG to write. Default: {default}, or {stem}-2.{suffix}, … if that exists."
    return Annotated[Path | None, typer.Option("--out", "-o", help=help)]


def echo_json(document) -> None:
    """One JSON document on stdout, for scripts (``--json``)."""
    import json

    typer.echo(json.dumps(document, indent=2))


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _os_error(e: OSError) -> str:
    """One line for an OSError no library call turned into a ``GpumlpError``: a path the file system
    refuses, or standard output that cannot be written (``gpumlp info CK > /dev/full``)."""
    from gpumlp.formats.atomic import path_error

    if e.filename is not None:
        return path_error(e.filename, e, "a file")
    if e.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG):
        with contextlib.suppress(OSError):  # the interpreter's last flush must not fail again at exit
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (open until exit)
        return f"cannot write the output: {e.strerror}; free some space or write it elsewhere"
    raise e


_said_interrupted = []  # a command said what Ctrl-C kept; main() says "interrupted" otherwise


def interrupted(message: str, code: int = 130) -> typer.Exit:
    """Exit ``code`` (130 for Ctrl-C; signals.py has the others) after saying, in one line, what
    the stop kept (main() then says nothing more). A closed stderr loses only the line."""
    from gpumlp.cli.display import echo

    with contextlib.suppress(KeyboardInterrupt):  # signals.Stop: stderr is gone
        echo(message, err=True)
    _said_interrupted.append(message)
    return typer.Exit(code)


def closed_output() -> typer.Exit:
    """Standard output's reader went away (``gpumlp info CK --json | head -c 10``): exit 141, as a
    program killed by SIGPIPE does, and quietly (the reader has what it wanted); stdout is pointed
    at the null device so that the interpreter's last flush does not fail on it again."""
    from gpumlp.cli.display import silence

    silence(sys.stdout)
    _said_interrupted.append("")  # nothing for main() to add
    return typer.Exit(signals.CLOSED_PIPE)


def command(name: str, on: typer.Typer | None = None, cls: type = Command):
    """``@app.command(name)`` (or ``on.command``, a sub-app's) whose library errors (``GpumlpError``)
    become one line on stderr and exit code 2, caught here once for every command."""

    def register(func):
        @functools.wraps(func)
        def run_command(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except GpumlpError as e:
                raise _fail(str(e)) from None
            except BrokenPipeError:  # before click's own handling, which exits 1
                raise closed_output() from None
            except OSError as e:
                raise _fail(_os_error(e)) from None

        return (on or app).command(name, cls=cls)(run_command)

    return register


def _config_options() -> list[inspect.Parameter]:
    """One typer option per ``TrainConfig`` field, with the default and panel declared there (its
    help is made there too, when shown: ``TrainCommand``)."""
    from gpumlp.training.config import TrainConfig

    params = []
    for f in dataclasses.fields(TrainConfig):
        m = f.metadata
        name = m.get("name", f.name)
        typ = m.get("cli_type") or {"int": int, "float": float, "str": str, "bool": bool}.get(f.type, str | None)
        flags = (f"--{name.replace('_', '-')}", *m.get("flags", ()))
        complete = completion(m["choices"], m.get("listed", False)) if "choices" in m else None
        info = typer.Option(*flags, rich_help_panel=m["panel"], autocompletion=complete)
        default = m.get("cli_default", f.default)
        params.append(inspect.Parameter(name, KEYWORD, default=default, annotation=Annotated[typ, info]))
    return params


KEYWORD = inspect.Parameter.KEYWORD_ONLY
RUN_OPTIONS = [  # gpumlp train's options that are not part of a run's configuration
    ("data_dir", DataDirOpt, None),
    ("save", Annotated[Path | None, typer.Option(
        help="Checkpoint to write (.npz or .json), replaced if it exists. Default: the --resume checkpoint, else "
        "checkpoints/[PRESET-]LAYERS-ACTIVATION-LOSS.npz, or -2.npz, -3.npz, … if an earlier run's is there.")], None),
    ("resume", Annotated[Path | None, typer.Option(
        help="Continue this checkpoint's run to --epochs epochs in all, exactly as if never stopped.")], None),
    ("save_every", Annotated[int, typer.Option(
        help="Also save the checkpoint every K epochs (0: only at the end).")], 0),
    ("config", Annotated[Path | None, typer.Option(
        help="A TOML file of these options, keyed by their names without --, e.g. lr = 0.1; the options "
        "typed here win over it, and it wins over a --preset (docs/cli.md, Config files).")], None),
    ("threads", Annotated[int | None, typer.Option(
        help="CPU BLAS threads. Default: GPUMLP_THREADS, else a resumed run's count, else one per free "
        "core. The same count gives the same bits.")], None),
    ("quiet", Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar: one plain line per epoch.")], False),
    ("log_format", Annotated[str, typer.Option(
        help="text, or json: one JSON object per epoch and one at the end, on stdout.",
        autocompletion=completion(lambda: LOG_FORMATS))], "text"),
]  # fmt: skip


def with_train_options(train_cli):
    """``train_cli(ctx, **options)`` given its typer options: the run's configuration (TrainConfig's
    fields, ``_config_options``), then how to run it (``RUN_OPTIONS``)."""
    train_cli.__signature__ = inspect.Signature(
        [
            inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
            *_config_options(),
            *(inspect.Parameter(name, KEYWORD, default=d, annotation=t) for name, t, d in RUN_OPTIONS),
        ]
    )
    train_cli.__annotations__ = {p.name: p.annotation for p in train_cli.__signature__.parameters.values()}
    return train_cli


def train_command(train_cli) -> None:
    """Register ``train_cli`` as ``gpumlp train`` with ``with_train_options``, and again, in its
    place, whenever ``gpumlp.optim.register`` changes the update rules its options come from."""
    from gpumlp import optim

    def register() -> None:
        at = next((i for i, c in enumerate(app.registered_commands) if c.name == "train"), None)
        command("train", cls=TrainCommand)(with_train_options(train_cli))  # appended last: moved to where it was
        if at is not None:
            app.registered_commands.insert(at, app.registered_commands.pop())
            del app.registered_commands[at + 1]

    register()  # (imports TrainConfig first, so that its rebuild runs before this one)
    optim.REBUILDS.append(register)


def given_options(ctx: typer.Context, options: dict) -> dict:
    """The options typed on the command line (not left at their defaults)."""
    sources = {name: ctx.get_parameter_source(name) for name in options}
    return {k: v for k, v in options.items() if sources[k] is not None and sources[k].name == "COMMANDLINE"}


def train_arguments(ctx: typer.Context, kw: dict) -> tuple[dict, dict, dict]:
    """``(run arguments, options, given)`` of ``gpumlp train``: the run's own (``RUN_OPTIONS``),
    every ``TrainConfig`` field's value by field name (``--layers`` is ``sizes``) plus ``preset``,
    and those of them typed on the command line."""
    run_args = {name: kw.pop(name) for name, _, _ in RUN_OPTIONS}
    given = given_options(ctx, kw)
    options, given = ({("sizes" if k == "layers" else k): v for k, v in d.items()} for d in (kw, given))
    given.pop("preset", None)
    return run_args, options, given


# typer checks an option's type and range with pydantic, whose messages read as a validator's
# ("Input should be greater than or equal to 1"): said here as gpumlp says the rest.
_WHAT = {"int_parsing": "a whole number", "int_from_float": "a whole number", "float_parsing": "a number",
         "greater_than_equal": "at least {ge}", "greater_than": "above {gt}", "less_than_equal": "at most {le}",
         "less_than": "below {lt}"}  # fmt: skip


def _usage_message(e) -> str:
    """A bad option's message: ``--test-size must be at least 1 (got 0)`` for a value typer refused."""
    errors = getattr(e.__cause__, "errors", None)
    param = getattr(e, "param", None)
    if errors is None or param is None or not getattr(param, "opts", None):
        return e.format_message()
    first = errors()[0]
    if first["type"] not in _WHAT:
        return e.format_message()
    option = max(param.opts, key=len)
    return f"{option} must be {_WHAT[first['type']].format(**first.get('ctx', {}))} (got {first['input']})"


def _ignore_sigint() -> None:
    signals.ignore_all()


def main() -> None:
    """Entry point: run the app, turning option errors into one line and exit code 2."""
    args = sys.argv[1:] or ["--help"]
    _said_interrupted.clear()
    # Once the command is done and has said so, Ctrl-C while the interpreter shuts down (a few
    # hundred ms of module teardown) would only turn a clean exit into a kill by SIGINT.
    atexit.unregister(_ignore_sigint)
    atexit.register(_ignore_sigint)
    why = "interrupted"
    try:
        with signals.stop_on_signals() as stops:  # SIGTERM and SIGHUP stop a command as Ctrl-C does
            rc = app(args=args, prog_name="gpumlp", standalone_mode=False)  # a typer.Exit's code, or None
            if sys.stdout is not None:  # (None: started with stdout closed, `>&-`)
                sys.stdout.flush()  # output still buffered for a pipe meets a closed one here, not at exit
        # typer turned a SIGTERM or SIGHUP into exit 130 (its code for any KeyboardInterrupt); a command
        # that said what the stop kept chose its code itself, from the stop it handled first
        if rc == 130 and stops and not _said_interrupted:
            rc, why = stops[0].exit_code, stops[0].why
    except UsageError as e:  # bad, missing or unknown option, unknown command
        ctx = getattr(e, "ctx", None)
        where = f"gpumlp {ctx.info_name} --help" if ctx is not None and ctx.parent is not None else "gpumlp --help"
        if ctx is None and args[0] in (c.name for c in app.registered_commands):  # the parser's errors lack one
            where = f"gpumlp {args[0]} --help"  # (gpumlp info CK --json=1)
        typer.echo(f"error: {_usage_message(e)} (see {where})", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt) as e:  # click wraps a KeyboardInterrupt in an Abort
        stop = e.__cause__ if isinstance(e, typer.Abort) and e.__cause__ is not None else e
        rc, why = signals.exit_code(stop), signals.why(stop)
    except typer.Exit as e:
        rc = e.exit_code
    except BrokenPipeError:  # in the flush above
        rc = closed_output().exit_code
    except SystemExit as e:  # click's own exit 1 for a closed pipe in what it writes itself (--help)
        if not isinstance(e.__context__, BrokenPipeError):
            raise
        rc = closed_output().exit_code
    if rc in (*signals.SIGNALS.values(), signals.CLOSED_PIPE) and not _said_interrupted:  # typer says nothing
        with contextlib.suppress(OSError):
            typer.echo(why, err=True)
    sys.exit(rc if isinstance(rc, int) else 0)
