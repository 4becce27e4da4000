"""``run``: one training run as ``gpumlp train`` makes it — load the data, build or resume the
network, ``fit`` it with its run files (checkpoint, metrics, Ctrl-C), test once, save; and
``command_config``/``train_settings``, the configuration the command's options (and config file) describe."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpumlp.backends import blas_threads
from gpumlp.data import datasets
from gpumlp.data.load import load_dataset, split
from gpumlp.errors import CheckpointError, ConfigError, GpumlpError
from gpumlp.formats import checkpoint
from gpumlp.model import MLP
from gpumlp.training import configfile, shutdown
from gpumlp.training.config import TrainConfig, default_checkpoint, describe_recipe, preset_config, resume_config
from gpumlp.training.evaluation import confidence_floor, evaluate
from gpumlp.training.loop import fit
from gpumlp.training.presets import preset_options
from gpumlp.training.runfiles import RunFiles
from gpumlp.training.state import EpochStats, TrainState
from gpumlp.training.stopping import TrainingDiverged, stalled


@dataclass
class RunResult:
    model: MLP
    history: list[EpochStats]
    test_accuracy: float | None  # None when --test-size is 0
    checkpoint: Path | None


def command_config(
    options: dict, given: dict, preset: str | None = None, resume=None, file: dict | None = None
) -> TrainConfig:
    """The configuration ``gpumlp train`` runs: ``options`` holds every option (defaults included),
    ``given`` those typed on the command line, ``file`` those of a config file (``configfile.read``).
    Each goes over the one before: a preset (given, else the file's), the file, the given options.
    A resumed run takes its checkpoint's configuration, with the file's and the given options over
    it (as if typed: a config file's run resumes with the same command plus ``--resume``)."""
    file = {k: v for k, v in (file or {}).items() if k not in configfile.EXTRA}
    if resume is not None and preset is not None:
        raise ConfigError("--preset starts a new run; a resumed run keeps its checkpoint's options (drop --preset)")
    preset = preset or file.get("preset")
    file.pop("preset", None)
    if resume is None and not (preset or file):
        return TrainConfig(**options)
    if resume is None:
        return preset_config(preset, **{**file, **given})
    overrides = {**(preset_options(preset) if preset else {}), **file, **given}
    return resume_config(checkpoint.read_metadata(resume).get("config", {}), overrides)


def train_settings(
    options: dict, given: dict, preset=None, resume=None, config=None, threads: int | None = None
) -> tuple[TrainConfig, int | None, str]:
    """``gpumlp train``'s configuration (``command_config``), BLAS thread count and where that came
    from, with the options of the config file ``config`` (if given) under those typed:
    ``(…, n, "--threads")``, else ``(…, n, "threads in FILE")``, else ``(…, None, "--threads")``."""
    file = configfile.read(config) if config is not None else {}
    cfg = command_config(options, given, preset, resume, file)
    if threads is None and file.get("threads") is not None:
        return cfg, file["threads"], f"threads in {config}"
    return cfg, threads, "--threads"


def run(
    cfg: TrainConfig,
    data_dir: str | os.PathLike | None = None,
    save: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[EpochStats], None] | None = None,
    resume: str | os.PathLike | None = None,
    save_every: int = 0,
    on_progress: Callable[[int, int, int, float], None] | None = None,
    threads: int | None = None,
    threads_from: str = "--threads",
) -> RunResult:
    """Load MNIST, train ``cfg`` (continuing the checkpoint ``resume`` if given), test once at the
    end, and save a checkpoint (unless ``save=False``): every ``save_every`` epochs, at the end, and
    on Ctrl-C or any other ``KeyboardInterrupt`` (``signals.Stop``: SIGTERM, SIGHUP, a closed output;
    then ``TrainingInterrupted`` is raised, at any moment, with the stop's exit status). Where the
    checkpoint's path cannot be written at the end, it is saved beside it or in the temp folder
    and a ``GpumlpError`` says where; where nothing can be written, ``TrainingInterrupted`` (exit
    status 2) says what is lost. Beside the checkpoint, ``<name>.metrics.jsonl`` gets one JSON
    line per epoch, rewritten as each epoch ends (a resumed run's file starts with the checkpoint's
    history).

    Without ``save``, the checkpoint is ``default_checkpoint(cfg)``, or ``name-2.npz``, ``-3``, …
    when an earlier run's files are there. The checkpoint is locked for the whole run: another run
    saving to the same path is refused (``CheckpointError``). ``threads``: the CPU BLAS threads
    (``gpumlp train --threads``; default ``GPUMLP_THREADS``, a resumed run's count, or one per free core),
    said in the start line to come from ``threads_from`` (``train_settings`` tells)."""
    if save_every < 0:
        raise ConfigError(f"--save-every must be 0 or more (got {save_every})")
    if threads is not None:
        blas_threads.check_threads(threads)
    path = None if save is False else checkpoint.check_writable(save or resume or default_checkpoint(cfg))
    rec = RunFiles(path, cfg, log, data_dir, save_every)
    first = []  # the stop that ended the run: its exit status wins over a second one's
    try:
        try:
            named = bool(save or resume)
            return _run(cfg, rec, data_dir, log, on_epoch, resume, on_progress, named, (threads, threads_from))
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP, a closed output (signals.Stop)
            first.append(e)
            raise rec.interrupted(e) from None  # saved under the lock
        finally:
            rec.release()
    except KeyboardInterrupt as e:  # one that came in the release, or in the save after a first stop
        raise rec.interrupted((first or [e])[0]) from None


def _run(cfg, rec: RunFiles, data_dir, log, on_epoch, resume, on_progress, named: bool, forced) -> RunResult:
    """``run`` under its checkpoint's lock; ``forced``: ``(threads, threads_from)``, the count asked for
    (None: chosen here) and by what."""
    model, state = _network(cfg, resume)
    largest = blas_threads.largest_product(model.sizes, cfg.batch_size)
    state.blas_threads, why = model.be.training_threads(state.blas_threads, largest, *forced)  # fit keeps it
    # On the CPU, the BLAS this process trains through: numpy's own or Intel MKL round differently.
    rec.start(model, state, **({"blas": model.be.blas.name or "none"} if model.be.xp is np else {}))
    if model.be.note:
        log(model.be.note)
    data = load_dataset(cfg.dataset, data_dir)
    train, (X_val, y_val), (X_te, y_te) = split(*data, cfg.train_size, cfg.val_size, cfg.test_size)
    here = resume is not None and rec.path is not None and Path(resume).resolve() == rec.path.resolve()
    rec.claim(named, resumed_here=here)
    log(_start_line(cfg, rec, resume, len(train[0]), len(X_val), why))
    _train(cfg, rec, train, (X_val, y_val), log, on_epoch, on_progress, threads=forced[0])
    if (ending := _early_ending(cfg, state)) is not None:
        log(ending)
    # Ctrl-C in the test pass saves every epoch, untested (RunFiles.interrupted).
    with model.be.threads(state.blas_threads):
        test_acc = evaluate(model, X_te, y_te) if len(X_te) else None  # the only look at the test set
        if len(X_val):  # where "not sure" starts for this network (gpumlp/losses.py)
            rec.extra["confidence_floor"] = confidence_floor(model, X_val)
    _save(rec, test_acc, len(X_te))
    return RunResult(model, state.history, test_acc, rec.path)


def _network(cfg: TrainConfig, resume) -> tuple[MLP, TrainState]:
    """The network ``cfg`` describes and a fresh state, or the checkpoint ``resume``'s with its state."""
    if not resume:
        return MLP(cfg.sizes, cfg.activation, cfg.loss, cfg.init, cfg.seed, cfg.device, cfg.dtype), TrainState()
    model, meta = checkpoint.load(resume, device=cfg.device)
    state = TrainState.from_metadata(meta)
    _check_resumed(resume, cfg, state)
    if state.blas_threads is None and meta.get("blas"):  # a CPU run from before counts were recorded:
        state.blas_threads = blas_threads.default_threads()  # it trained with the BLAS's own count
    return model, state


def _start_line(cfg: TrainConfig, rec: RunFiles, resume, n_train: int, n_val: int, why: str) -> str:
    """``"training MLP(…) on 50000 images (10000 for validation), 30 epochs, …, 1 BLAS thread (why)"``."""
    state = rec.state
    start = f"from epoch {state.epochs_done} of {resume}, " if resume else ""
    counted = f", {state.blas_threads} BLAS thread{'s' if state.blas_threads != 1 else ''} ({why})" if why else ""
    return (
        f"training {rec.model} on {n_train} {_images(cfg.dataset)} ({n_val} for validation), {start}"
        f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, batch {cfg.batch_size}, {describe_recipe(cfg)}{counted}"
    )


def _train(cfg: TrainConfig, rec: RunFiles, train, val, log, on_epoch, on_progress, threads) -> None:
    """``fit`` the run's network on ``train`` ``(X, y)``, validating on ``val``; a run that diverges
    saves its last finite epoch (if any) and ends in a ``GpumlpError`` saying so."""
    fit_args = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, **cfg.recipe())
    state = rec.state
    try:
        fit(
            rec.model, *train, **fit_args, X_val=val[0], y_val=val[1], on_epoch=_after_epoch(rec, on_epoch, log),
            state=state, on_progress=on_progress, log=log, threads=threads, verbose=0,  # the caller shows progress
        )  # fmt: skip
    except TrainingDiverged as e:
        if state.epochs_done > 0:
            rec.save()
            raise GpumlpError(f"{e}; saved the last finite epoch ({state.epochs_done}) to {rec.path}") from None
        raise GpumlpError(f"{e}; nothing saved") from None


def _early_ending(cfg: TrainConfig, state: TrainState) -> str | None:
    """What early stopping did, when it did anything: stopped, or kept an earlier epoch's weights."""
    if state.weights_epoch is not None and state.weights_epoch != state.epochs_done:
        what = "stopped early" if state.stopped_epoch else "finished"
        return (f"{what} after epoch {state.epochs_done}; kept the weights of epoch {state.weights_epoch}, "
                f"the best validation {cfg.monitor} ({_score(state.best_score, cfg.monitor)})")  # fmt: skip
    if state.stopped_epoch:
        return (
            f"stopped early after epoch {state.epochs_done}: "
            f"no better validation {cfg.monitor} in {cfg.patience} epochs"
        )
    return None


def _save(rec: RunFiles, test_acc: float | None, n_test: int) -> None:
    """The run's last save, with its test accuracy; one line where it could not go where asked."""
    try:
        rec.save(test_acc, n_test)
    except CheckpointError as e:  # neither on its path nor anywhere else
        raise rec.lost(e) from None
    if rec.rescued is not None:
        raise GpumlpError(shutdown.rescued_message(rec.path, rec.rescued[1], rec.rescued[0]))


def _after_epoch(rec: RunFiles, on_epoch, log) -> Callable[[EpochStats], None]:
    """What ends each epoch: the metrics file, the caller's ``on_epoch``, a save every K epochs, and
    once per run the warning for a run that goes nowhere (``stalled``; the exit status stays)."""
    warned = []

    def after_epoch(stats: EpochStats) -> None:
        rec.write_metrics()
        if on_epoch is not None:
            on_epoch(stats)
        if not warned and (warning := stalled(rec.state.history, rec.model.sizes[-1])):
            warned.append(warning)
            log(warning)
        rec.save_every_k(stats.epoch)

    return after_epoch


def _images(dataset: str) -> str:
    """``"images"``, or ``"Fashion-MNIST images"`` where the dataset is not MNIST."""
    rec = datasets.get(dataset)
    return "images" if rec is datasets.MNIST else f"{rec.title} images"


def _check_resumed(resume, cfg: TrainConfig, state: TrainState) -> None:
    """A resumed run must have epochs left to train. (That its configuration describes the network
    the checkpoint holds is checked when the checkpoint is read: gpumlp/formats/metadata.py.)"""
    if state.epochs_done >= cfg.epochs:
        raise ConfigError(
            f"{resume} already has {state.epochs_done} epochs; pass --epochs above {state.epochs_done} to continue"
        )


def _score(score: float | None, monitor: str) -> str:
    if score is None:
        return "none"
    return f"{100 * score:.2f}%" if monitor == "accuracy" else f"loss {-score:.4f}"
