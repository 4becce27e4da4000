"""``run_sweep``: a sweep on this computer. Checks the space and the storage, creates or joins the
study, starts ``jobs`` worker processes (each with its share of the cores, or its own GPU), and
watches the study until it has its total, reporting each finished trial. A stop signal stops every
worker within a second or two; their running trials are failed, and the same call later goes on
to the total. A worker that dies (killed, out of memory) is replaced."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpumlp.backends.blas_threads import auto_threads, usable_cpus
from gpumlp.backends.registry import parse_device
from gpumlp.data import datasets
from gpumlp.data.load import locate
from gpumlp.errors import SweepError
from gpumlp.formats import signals
from gpumlp.sweep import KEEP
from gpumlp.sweep import study as studies
from gpumlp.sweep.space import Space, config
from gpumlp.sweep.worker import WorkerSpec, make_pruner, work
from gpumlp.training.config import MAX_INT, short_number

WATCH_S = 0.5  # how often the study is read for the progress display
STOP_S = 5.0  # how long stopped workers may take to fail their trials before they are killed
RESTARTS = 3  # how many times a worker that died is replaced, per worker
MAX_HEARTBEAT_S = 86_400  # a day: a slower beat would leave a dead worker's trial running for days
JOBS_PER_CORE = 4  # --jobs at most this many per usable core: beyond it workers only wait on each other


@dataclass
class Progress:
    """Where a study stands, read from its storage: its counts, its best complete trial, the
    trials finished since the last report (``new``), the time since the command started and an
    estimate of the time left, from the rate of this command's trials."""

    total: int
    counts: studies.Counts
    best: object | None  # Optuna's FrozenTrial
    new: list = field(default_factory=list)
    elapsed: float = 0.0
    eta: float | None = None


def worker_devices(device: str, jobs: int, gpus: int) -> list[str]:
    """The device of each of ``jobs`` workers: ``cuda`` spreads them over the ``gpus`` GPUs in turn
    (``cuda:0``, ``cuda:1``, …); any other device (``cpu``, ``cuda:1``) is every worker's."""
    if device.strip().lower() == "cuda" and gpus > 1:
        return [f"cuda:{i % gpus}" for i in range(jobs)]
    return [device] * jobs


def gpu_count(device: str) -> int:
    """How many CUDA GPUs ``--device cuda`` may spread workers over (1 when CuPy cannot say: the
    workers then report the device's own error)."""
    if device.strip().lower() != "cuda":
        return 1
    try:
        import cupy

        return max(1, cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no CuPy, no driver: the worker's backend says why, in one line
        return 1


def worker_threads(jobs: int, cores: int | None = None) -> int:
    """BLAS threads per worker: the ``cores`` other programs leave free (by default measured now,
    as ``gpumlp train`` counts them: ``blas_threads.auto_threads``) shared among ``jobs`` workers.
    A BLAS thread that shares its core with another program waits whole time slices: on a busy
    computer two threads can train ten times slower than one."""
    return max(1, (cores if cores is not None else auto_threads()[0]) // jobs)


def run_sweep(space: Space, study: str, url: str, total: int, *, jobs: int = 1, heartbeat: int | None = None,
              pruner: str = "median", keep: str = "best", device: str = "cpu", data_dir=None,
              on_progress: Callable[[Progress], None] | None = None,
              log: Callable[[str], None] | None = None) -> Progress:  # fmt: skip
    """Run the study ``study`` at ``url`` to ``total`` finished trials with ``jobs`` workers here;
    ``on_progress`` gets a ``Progress`` whenever a trial finishes, and now and then; ``log`` the
    line that says what starts. Returns the last ``Progress``."""
    check_options(total, jobs, heartbeat, keep, device)
    cfg = config(space.fixed)
    locate(datasets.get(cfg.dataset), data_dir)  # downloaded once here, not by every worker at once
    storage = studies.open_storage(url)
    handle = studies.open_study(storage, study, space, make_pruner(pruner), heartbeat=heartbeat)
    heartbeat = handle.user_attrs.get(studies.HEARTBEAT_ATTR) or studies.HEARTBEAT_S
    keep_dir = str((Path(storage.engine.url.database).parent if url.startswith("sqlite") else Path("sweeps")) / study)
    specs = [
        WorkerSpec(url, study, space.as_dict(), total, heartbeat, pruner, keep, os.path.abspath(keep_dir), dev,
                   worker_threads(jobs), None if data_dir is None else str(data_dir), i, os.getpid())
        for i, dev in enumerate(worker_devices(device, jobs, gpu_count(device)))
    ]  # fmt: skip
    now = _progress(handle.get_trials(deepcopy=False), total, time.monotonic(), None, None)[0]
    if log is not None:
        threads = space.threads or specs[0].threads
        devices = ", ".join(dict.fromkeys(s.device for s in specs))
        log(f"study {study} in {studies.shown(url)}: {now.counts.finished} of {total} trials finished"
            + ("" if now.counts.finished >= total else f"; {jobs} worker{'s' if jobs != 1 else ''} here on "
               f"{devices}, {threads} BLAS thread{'s' if threads != 1 else ''} each"))  # fmt: skip
    if now.counts.finished >= total:  # nothing to do: no worker started
        return now
    return Pool(specs).watch(handle, total, on_progress)


def check_options(total: int, jobs: int, heartbeat: int | None, keep: str, device: str) -> None:
    """``run_sweep``'s numbers and names, checked before anything is created (``gpumlp sweep run``
    calls it before it makes sweeps/)."""
    for name, value, least, most in (("--trials", total, 1, MAX_INT), ("--jobs", jobs, 1, None),
                                     ("--heartbeat", heartbeat, 1, MAX_HEARTBEAT_S)):  # fmt: skip
        if value is not None and value < least:
            raise SweepError(f"{name} must be at least {least} (got {value})")
        if value is not None and most is not None and value > most:  # 10**400 trials: an OverflowError later
            raise SweepError(f"{name} must be at most {most:,} (got {short_number(value)})")
    most = JOBS_PER_CORE * len(usable_cpus())
    if jobs > most:  # each is a process of its own: --jobs 100000 would start 100,000 interpreters
        raise SweepError(
            f"--jobs {short_number(jobs)} is more than {JOBS_PER_CORE} workers for each of the {most // JOBS_PER_CORE} "
            f"cores here; give at most {most} (more share the cores, and run no faster)"
        )
    if keep not in KEEP:
        raise SweepError(f"unknown --keep {keep!r}: choose one of {', '.join(KEEP)}")
    parse_device(device)  # a bad name is one line here, not one per worker


class SweepInterrupted(Exception):
    """The sweep was stopped: the message says what the study kept; ``exit_code`` the stop's status."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Pool:
    """The worker processes of one sweep command."""

    def __init__(self, specs: list[WorkerSpec]):
        self.ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited BLAS or CUDA state
        self.errors = self.ctx.Queue()
        self.specs, self.restarts = specs, [0] * len(specs)
        self.procs = [self._start(s) for s in specs]

    def _start(self, spec: WorkerSpec):
        p = self.ctx.Process(target=work, args=(spec, self.errors), name=f"gpumlp-sweep-{spec.index}", daemon=True)
        p.start()
        return p

    def watch(self, handle, total: int, on_progress) -> Progress:
        start, seen, first = time.monotonic(), None, None
        try:
            while True:
                trials = handle.get_trials(deepcopy=False)
                progress, seen, first = _progress(trials, total, start, seen, first)
                if on_progress is not None:
                    on_progress(progress)
                if not self._check():
                    last = _progress(handle.get_trials(deepcopy=False), total, start, seen, first)[0]
                    if on_progress is not None and last.new:
                        on_progress(last)
                    if last.counts.finished < total:  # each worker was stopped by a signal of its own
                        raise SweepError(f"the workers were stopped with {last.counts.finished} of {total} trials "
                                         "finished; run the same command to go on")  # fmt: skip
                    return last
                time.sleep(WATCH_S)
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP (signals.Stop)
            self.stop(handle)
            c = studies.counts(handle.get_trials(deepcopy=False))
            raise SweepInterrupted(
                f"{signals.why(e)}: {c.finished} of {total} trials finished, the running ones failed; "
                "run the same command to go on",
                signals.exit_code(e),
            ) from None
        except BaseException:
            self.stop(handle)
            raise

    def _check(self) -> bool:
        """False once every worker is done; a worker's error stops the others and is raised here;
        a worker that died otherwise is replaced."""
        if not self.errors.empty():
            raise SweepError(self.errors.get())
        for i, p in enumerate(self.procs):
            if p.exitcode is None or p.exitcode == 0 or p.exitcode in signals.SIGNALS.values():
                continue  # running, done, or stopped by a signal meant for it
            if p.exitcode == 2:  # its error is on its way through the queue
                try:
                    raise SweepError(self.errors.get(timeout=STOP_S))
                except queue.Empty:
                    raise SweepError(f"sweep worker {i} stopped with an error (exit status 2)") from None
            if self.restarts[i] >= RESTARTS:
                raise SweepError(f"sweep worker {i} died {RESTARTS + 1} times (last exit status {p.exitcode})")
            self.restarts[i] += 1
            self.procs[i] = self._start(self.specs[i])
        return any(p.exitcode is None for p in self.procs)

    def stop(self, handle) -> None:
        """Stop every worker (SIGTERM: each fails its running trial) and wait; kill the late ones,
        and fail what trials they left running."""
        for p in self.procs:
            if p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):  # (it ended a moment ago)
                    os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_S
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                p.kill()
                p.join()
        studies.fail_orphans(handle, socket.gethostname(), {p.pid for p in self.procs})


def _progress(trials, total: int, start: float, seen, first):
    """``(Progress, seen, first)``: ``seen`` the trials finished at the last look, ``first`` the
    number finished when the command started (the estimate counts only this command's)."""
    from optuna.trial import TrialState

    ended = {t.number for t in trials if t.state.is_finished()}
    new = [t for t in trials if t.number in ended - (seen if seen is not None else ended)]
    c = studies.counts(trials)
    first = c.finished if first is None else first
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    elapsed = time.monotonic() - start
    done_here = c.finished - first
    left = max(0, total - c.finished)
    eta = elapsed / done_here * left if done_here > 0 else (0.0 if not left else None)
    return Progress(total, c, best, sorted(new, key=lambda t: t.number), elapsed, eta), ended, first
