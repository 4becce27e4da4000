"""The files of one training run, and what of the run they hold: the checkpoint (locked while the
run trains, saved atomically), the metrics file beside it, and the one line a Ctrl-C prints about
them. ``gpumlp.training.run.run`` drives it; writing itself goes through ``gpumlp.formats.atomic``."""

from __future__ import annotations

import contextlib
import json
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from gpumlp.data.datasets import checkpoint_fields
from gpumlp.errors import CheckpointError, GpumlpError
from gpumlp.formats import atomic, checkpoint, signals
from gpumlp.training import shutdown

if TYPE_CHECKING:
    from gpumlp.model import MLP
    from gpumlp.training.config import TrainConfig
    from gpumlp.training.state import TrainState


class TrainingInterrupted(Exception):
    """Ctrl-C, SIGTERM, SIGHUP or a closed output during ``run``: every completed epoch is in
    ``checkpoint`` (None: nothing to keep). ``exit_code``: 130, 143, 129, 141 or 2 (signals.py).

    ``str(e)`` is the one line to show: what is kept where, and the command that goes on."""

    def __init__(self, message: str, checkpoint: Path | None, epochs_done: int, resume_command: str, exit_code=130):
        super().__init__(message)
        self.checkpoint, self.epochs_done, self.resume_command = checkpoint, epochs_done, resume_command
        self.exit_code = exit_code


def metrics_path(checkpoint_path: Path) -> Path:
    """``checkpoints/run.npz`` → ``checkpoints/run.npz.metrics.jsonl`` (readable by
    pandas.read_json(lines=True)). The name holds the checkpoint's whole name, extension included:
    ``run.json``'s history never lands in ``run.npz``'s metrics file."""
    return checkpoint_path.with_name(checkpoint_path.name + ".metrics.jsonl")


def _epochs_saved(path: Path) -> int | None:
    """How many epochs the checkpoint at ``path`` holds (None: there is none, or none gpumlp reads)."""
    try:
        meta = checkpoint.read_metadata(path)
    except (GpumlpError, OSError):
        return None
    return int((meta.get("train_state") or {}).get("epochs_done", len(meta.get("history") or [])))


class RunFiles:
    """The files of one run, and what of the run they hold: the checkpoint (``saved``: its epochs),
    the metrics beside it, and the one line a Ctrl-C prints."""

    def __init__(self, path: Path | None, cfg: TrainConfig, log, data_dir, save_every: int):
        self.path, self.cfg, self.log, self.data_dir, self.save_every = path, cfg, log, data_dir, save_every
        self.model, self.state, self.extra = None, None, {}
        self.saved, self.tested, self.warned, self.lock = 0, False, set(), None
        self.rescued = None  # (where the checkpoint went instead, why) when its path could not be written

    def start(self, model: MLP, state: TrainState, **extra) -> None:
        self.model, self.state, self.extra = model, state, extra
        self.saved = self.on_path = state.epochs_done  # a resumed run's epochs are on disk already

    def claim(self, named: bool, resumed_here: bool = False) -> None:
        """Lock the checkpoint for this run. A named path (--save, --resume) is refused while
        another run holds it; a default name moves on to the next free suffix (-2, -3, …). Then the
        path's metrics file is made to agree with its checkpoint (``reconcile``); ``resumed_here``:
        this run continues the checkpoint on that path."""
        if self.path is None:
            return
        for path in [self.path] if named else atomic.numbered(self.path):
            if not named and atomic.taken(path, lambda p: [metrics_path(p)]):
                continue
            lock = atomic.RunLock(path)
            if lock.acquire():
                break
            if named:
                raise CheckpointError(
                    f"another gpumlp run ({lock.holder()}) is saving to {path}; wait for it to end "
                    "or choose another --save path"
                )
        else:
            raise CheckpointError(f"no free name beside {self.path}; choose a --save path")
        self.path, self.lock = path, lock
        if not resumed_here:  # a run resumed from another file has none of its epochs on this path yet
            self.saved = self.on_path = 0
        atomic.check_target(metrics_path(path), "a metrics file")
        stale = [p for f in (path, metrics_path(path)) for p in atomic.remove_stale(f)]
        if stale:
            self.log(f"removed {len(stale)} temporary file(s) a killed run left beside {path}")
        shutdown.check_space(path, shutdown.checkpoint_bytes(self.cfg, json=path.suffix == ".json"))
        self.reconcile(resumed_here)

    def reconcile(self, resumed_here: bool) -> None:
        """A run killed with SIGKILL leaves its metrics file ahead of its checkpoint (the one is
        rewritten every epoch, the other saved every --save-every epochs). A resumed run rewrites
        the file to the checkpoint's history; a new run moves it aside, since its epochs are the
        only record of what the killed run did. Either says so in one line."""
        metrics = metrics_path(self.path)
        try:
            lines = metrics.read_bytes().count(b"\n")
        except OSError:  # none (or unreadable: writing it will say so)
            return
        kept = self.state.epochs_done if resumed_here else _epochs_saved(self.path)
        if lines <= (kept or 0):
            return
        has = f"{metrics} had {lines} epoch{'s' if lines != 1 else ''}"
        why = "its checkpoint" + (f" holds {kept}" if kept else " is missing") + " (a run was killed before saving)"
        if resumed_here:
            self._write_metrics(metrics, self.state.history)
            self.log(f"{has} and {why}: rewrote it to the checkpoint's {kept} epochs")
            return
        names = (metrics.with_name(f"{metrics.stem}.orphaned-{n}.jsonl") for n in range(1, 10_000))
        aside = next(p for p in names if not p.exists())
        metrics.rename(aside)
        self.log(f"{has} and {why}: moved it aside to {aside.name}")

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def save(self, test_accuracy=None, n_test: int = 0) -> None:
        """Save the checkpoint; where its path cannot be written, to a fallback (``rescued``)."""
        if self.path is None:
            return
        try:
            self._save_to(self.path, test_accuracy, n_test)
        except CheckpointError as e:
            where = shutdown.rescue(lambda p: self._save_to(p, test_accuracy, n_test), self.path, e)
            self.rescued = where, e
            self._write_metrics(metrics_path(where), self.state.history)
            self._metrics_back()

    def lost(self, error: CheckpointError, why: str | None = None) -> TrainingInterrupted:
        """The run's epochs could be saved neither on its path nor anywhere else (``error`` says
        why): the metrics file goes back to what the path holds, and the one line says what is
        lost; exit status 2, for a write that failed, whatever stop (``why``) came first."""
        self._metrics_back()
        done = self.state.epochs_done
        kept = self.on_path if self.on_path and _epochs_saved(self.path) == self.on_path else 0
        every = ["--save-every", str(self.save_every)] if self.save_every else []
        go_on = (
            self.command("train", "--resume", str(self.path), "--epochs", str(self.cfg.epochs), *every) if kept else ""
        )
        message = shutdown.lost_message(why, done, self.cfg.epochs, error, kept, self.path, go_on)
        return TrainingInterrupted(message, self.path if kept else None, kept, go_on, signals.WRITE_ERROR)

    def _metrics_back(self) -> None:
        """After a rescue, the path's metrics file goes back to the epochs its checkpoint holds."""
        target = metrics_path(self.path)
        with contextlib.suppress(GpumlpError, OSError):  # the disk is full: the file stays as it was
            if self.on_path:
                self._write_metrics(target, self.state.history[: self.on_path])
            else:
                target.unlink(missing_ok=True)

    def _save_to(self, path: Path, test_accuracy, n_test: int) -> None:
        s = self.state
        try:
            checkpoint.save(
                path, self.model, s.arrays, config=self.cfg.to_dict(), history=[asdict(e) for e in s.history],
                train_state=s.to_dict(), optimizer=s.optimizer, **checkpoint_fields(self.cfg.dataset),
                test_accuracy=test_accuracy, test_size=n_test if test_accuracy is not None else 0, **self.extra,
            )  # fmt: skip
        except atomic.DeferredInterrupt:  # Ctrl-C during the write, which completed first
            self._saved(path, test_accuracy)
            raise
        self._saved(path, test_accuracy)

    def _saved(self, path: Path, test_accuracy) -> None:
        self.saved, self.tested = self.state.epochs_done, test_accuracy is not None
        if path == self.path:
            self.on_path = self.saved

    def write_metrics(self) -> None:
        """Rewrite the metrics file with the whole history (it and the checkpoint always agree)."""
        if self.path is not None:
            self._try(lambda: self._write_metrics(metrics_path(self.path), self.state.history))

    @staticmethod
    def _write_metrics(path: Path, history) -> None:
        lines = "".join(json.dumps(asdict(e)) + "\n" for e in history).encode()
        atomic.atomic_write(path, lambda f: f.write(lines), "a metrics file")

    def save_every_k(self, epoch: int) -> None:
        if self.path is not None and self.save_every and epoch % self.save_every == 0 and epoch < self.cfg.epochs:
            self._try(self.save)

    def _try(self, write) -> None:
        """A write during training that fails warns once and training goes on: the final save,
        which must succeed, keeps every epoch."""
        try:
            write()
        except GpumlpError as e:
            if not self.warned:
                self.log(f"warning: {e}; training goes on, and the final save keeps every epoch")
            self.warned.add(str(e))

    def command(self, *args: str) -> str:
        """A shell-quoted ``gpumlp`` command line for this run's checkpoint, with its --data-dir."""
        data = ["--data-dir", str(self.data_dir)] if self.data_dir is not None else []
        return shlex.join(["gpumlp", *args, *data])

    def interrupted(self, cause: BaseException | None = None) -> TrainingInterrupted:
        """After a stop (``cause``: Ctrl-C, SIGTERM, SIGHUP, a closed output): save what the checkpoint
        lacks (a second signal waits for that save), and say in one line what is kept where, and
        how to go on. The exception carries the exit status the stop calls for."""
        s = self.state
        done = s.epochs_done if s is not None else 0
        why, code = signals.why(cause), signals.exit_code(cause)
        if self.path is not None and done > self.saved:
            self.write_metrics()  # (unwritten yet when a run resumed from another file stops before its first epoch)
            try:
                self.save()
            except atomic.DeferredInterrupt:  # a second signal: raised once the save is complete
                pass
            except CheckpointError as e:  # the path and every fallback
                return self.lost(e, why)
        if done == 0:
            return TrainingInterrupted(f"{why} before the first epoch ended: nothing to save", None, 0, "", code)
        if self.path is None:
            return TrainingInterrupted(f"{why} after epoch {done} (save=False: nothing saved)", None, done, "", code)
        path, note = self.path, ""
        if self.rescued is not None:
            path, error = self.rescued
            note = f" ({error}; moved there instead)"
        if done >= self.cfg.epochs or s.stopped_epoch:
            test = self.command("test", str(path))
            message = (
                f"{why}: all {done} epochs are tested and saved in {path}{note}"
                if self.tested
                else f"{why} in the test pass: all {done} epochs are saved in {path}{note}; test it with: {test}"
            )
            return TrainingInterrupted(message, path, done, "" if self.tested else test, code)
        every = ["--save-every", str(self.save_every)] if self.save_every else []
        go_on = self.command("train", "--resume", str(path), "--epochs", str(self.cfg.epochs), *every)
        message = f"{why}: epochs 1-{done} of {self.cfg.epochs} are saved in {path}{note}; resume with: {go_on}"
        return TrainingInterrupted(message, path, done, go_on, code)
