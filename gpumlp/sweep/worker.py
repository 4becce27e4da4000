"""A sweep's worker: one process that loads the images once, then claims trials from the study
and trains each with ``fit``, scored on the validation images only, until the study has its total.

Each epoch's validation accuracy goes to Optuna (``trial.report``), whose pruner may stop the
trial there. A stop signal fails the running trial and ends the worker; a heartbeat thread tells
the other workers, on any machine, that the trial is alive."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna

from gpumlp.data.load import load_dataset, split
from gpumlp.errors import GpumlpError, SweepError
from gpumlp.formats import checkpoint, signals
from gpumlp.model import MLP
from gpumlp.sweep import PRUNERS
from gpumlp.sweep import study as studies
from gpumlp.sweep.space import check_space, config
from gpumlp.training.loop import fit
from gpumlp.training.state import TrainState
from gpumlp.training.stopping import TrainingDiverged

POLL_S = 0.5  # how often a worker with nothing to claim asks again


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs, picklable: the study, its space (``Space.as_dict``) and total,
    the storage's heartbeat, the pruner's name, which networks to keep and where, the device and
    the BLAS threads of this worker, and the images' folder."""

    url: str
    study: str
    space: dict
    total: int
    heartbeat: int
    pruner: str
    keep: str
    keep_dir: str
    device: str
    threads: int
    data_dir: str | None
    index: int = 0
    parent: int | None = None  # the sweep command's pid: the worker stops when it is gone


def make_pruner(name: str):
    """Optuna's pruner for ``--pruner``: median (once 5 trials are complete, a trial below the
    median of theirs at the same epoch stops), halving (successive halving, its first rung after
    epoch 1: epochs are few) or none."""
    pruners = {"median": optuna.pruners.MedianPruner, "none": optuna.pruners.NopPruner,
               "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1)}  # fmt: skip
    if name not in PRUNERS:
        raise SweepError(f"unknown --pruner {name!r}: choose one of {', '.join(PRUNERS)}")
    return pruners[name]()


def work(spec: WorkerSpec, errors=None) -> None:
    """A worker process's main: run trials until the study has ``spec.total`` finished ones. A
    ``GpumlpError`` goes to ``errors`` (a queue) as one line, with exit status 2; a stop signal
    fails the running trial and exits with the signal's status."""
    try:
        with signals.stop_on_signals():
            _watch_parent(spec.parent)
            code = _work(spec)
    except GpumlpError as e:
        if errors is not None:
            errors.put(str(e))
        code = 2
    except KeyboardInterrupt as e:
        code = signals.exit_code(e)
    sys.exit(code)


def _work(spec: WorkerSpec) -> int:
    space = check_space(spec.space)
    storage = studies.open_storage(spec.url, spec.heartbeat)
    study = studies.open_study(storage, spec.study, space, make_pruner(spec.pruner),
                               optuna.samplers.TPESampler(constant_liar=True))  # fmt: skip
    cfg = config(space.fixed)
    images = load_dataset(cfg.dataset, spec.data_dir)
    (X, y), val, _ = split(*images, cfg.train_size, cfg.val_size, 0)  # loaded once, for every trial
    worker = {"host": socket.gethostname(), "pid": os.getpid(), "device": spec.device}
    while True:
        trial = None
        try:
            with signals.deferred():  # a stop waits for the claim: a claimed trial is run or failed, never lost
                trial = studies.claim(study, storage, spec.total, worker)
        except KeyboardInterrupt:
            if trial is not None and trial != studies.WAIT:
                _fail(study, storage, trial)
            raise
        if trial is None:
            return 0
        if trial == studies.WAIT:
            time.sleep(POLL_S)
            continue
        run_trial(spec, study, storage, trial, space, (X, y, *val))


def run_trial(spec: WorkerSpec, study, storage, trial, space, data) -> None:
    """Train ``trial``'s options, report each epoch, and tell the study how it ended. Anything that
    stops it midway (a stop signal, an error) marks it failed, and is raised again; a library
    error then names the trial."""
    try:
        with _heartbeat(storage, trial, spec.heartbeat):
            _run_trial(spec, study, storage, trial, space, data)
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # another worker found its heartbeat stale (a machine paused too long), failed it and retries it
    except BaseException as e:
        _fail(study, storage, trial)
        if isinstance(e, GpumlpError) and not isinstance(e, SweepError):
            raise SweepError(f"trial {trial.number} ({_options_text(trial.params)}): {e}") from None
        raise


def _fail(study, storage, trial) -> None:
    """Mark ``trial`` failed after a stop signal or an error, which may have cut a database write
    short: this thread's session, left mid-transaction, is dropped first (the second time its
    connections too). Failing that, the command fails its workers' trials (``fail_orphans``), and
    on another machine the trial's stale heartbeat."""
    signals.ignore_all()  # a second signal must not cut this write short (the worker is ending)
    for attempt in range(2):
        try:
            storage.scoped_session.remove()
            if attempt:
                storage.engine.dispose()
            study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            return
        except Exception:
            time.sleep(0.1)


def _run_trial(spec: WorkerSpec, study, storage, trial, space, data) -> None:
    X, y, X_val, y_val = data
    cfg = config(space.suggest(trial))  # (a combination of values the space's checks could not foresee raises)
    threads = space.threads or spec.threads
    trial.set_user_attr("threads", threads)

    def on_epoch(stats):
        trial.report(stats.val_accuracy, stats.epoch)
        if stats.epoch < cfg.epochs and trial.should_prune():  # after the last epoch there is nothing to save
            raise optuna.TrialPruned()

    fit_args = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, **cfg.recipe())
    t0, state = time.perf_counter(), TrainState()
    model = MLP(cfg.sizes, cfg.activation, cfg.loss, cfg.init, cfg.seed, spec.device, cfg.dtype)
    try:
        fit(model, X, y, **fit_args, X_val=X_val, y_val=y_val, on_epoch=on_epoch, state=state, threads=threads)
    except optuna.TrialPruned:
        return _tell(study, trial, optuna.trial.TrialState.PRUNED, time.perf_counter() - t0, state)
    except TrainingDiverged as e:  # a poor trial, stopped where it failed: pruned, as the pruner would
        trial.set_user_attr("diverged", str(e))
        return _tell(study, trial, optuna.trial.TrialState.PRUNED, time.perf_counter() - t0, state)
    seconds = time.perf_counter() - t0
    value = state.history[(state.weights_epoch or len(state.history)) - 1].val_accuracy  # of the weights kept
    with studies.study_lock(storage, spec.study):  # who is best, and its file, decided by one worker at a time
        _keep(spec, study, trial, model, cfg, value, state)
        _tell(study, trial, optuna.trial.TrialState.COMPLETE, seconds, state, value)


def _tell(study, trial, outcome, seconds: float, state: TrainState, value: float | None = None) -> None:
    trial.set_user_attr("seconds", round(seconds, 3))
    trial.set_user_attr("epochs", len(state.history))
    study.tell(trial, value, state=outcome, skip_if_finished=True)  # (failed as stale meanwhile: told already)


def _keep(spec: WorkerSpec, study, trial, model, cfg, value: float, state: TrainState) -> None:
    """Save the trial's network in ``spec.keep_dir`` as ``--keep`` says: every complete trial's
    (all), or the study's best only (best; the earlier best saved by this computer is then removed)."""
    if spec.keep == "none":
        return
    try:
        best = study.best_value
    except ValueError:  # no complete trial yet
        best = None
    if spec.keep == "best" and best is not None and value <= best:
        return
    folder = Path(spec.keep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"trial-{trial.number}.npz"
    checkpoint.save(path, model, config=cfg.to_dict(), history=[asdict(e) for e in state.history],
                    val_accuracy=value, study=spec.study, trial=trial.number)  # fmt: skip
    trial.set_user_attr("checkpoint", {"host": socket.gethostname(), "path": str(path.resolve())})
    if spec.keep == "best":
        for old in folder.glob("trial-*.npz"):
            if old != path:
                old.unlink(missing_ok=True)


@contextlib.contextmanager
def _heartbeat(storage, trial, interval: int):
    """Record ``trial``'s heartbeat every ``interval`` seconds while the block runs."""
    stop = threading.Event()

    def beat():
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried; two missed fail the trial
                storage.record_heartbeat(trial._trial_id)  # (Optuna's own optimize does the same)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True, name="gpumlp-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _watch_parent(parent: int | None) -> None:
    """When the sweep command that started this worker is gone (killed), stop as on SIGTERM."""
    import multiprocessing
    from multiprocessing.connection import wait

    process = multiprocessing.parent_process()
    if parent is None or process is None:
        return

    def watch():
        wait([process.sentinel])  # ready the moment the parent is gone
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="gpumlp-parent").start()


def _options_text(params: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items())
