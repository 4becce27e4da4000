"""What ``gpumlp train`` shows while it runs: a live bar on a terminal, plain lines elsewhere, or JSON.

- ``bar`` (stdout is a terminal): a rich progress bar per epoch with images/s, ETA and the running
  loss, replaced by a one-line summary when the epoch ends.
- ``plain`` (a pipe, a log file, CI, or ``--quiet``): one summary line per epoch, no control characters.
- ``json`` (``--log-format json``): one JSON object per line on stdout — ``{"event": "epoch", …}`` per
  epoch and ``{"event": "done", …}`` at the end; other messages go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict

import typer

from gpumlp.formats import signals


def echo(text: str, err: bool = False) -> None:
    """``typer.echo``, where an output that is closed (``| head -1``) or cannot be written (a full
    disk) stops the run as a signal would (``signals.Stop``: exit 141 or 2), after pointing the
    stream at the null device so that nothing on the way out fails on it again."""
    try:
        typer.echo(text, err=err)
    except OSError as e:
        silence(sys.stderr if err else sys.stdout)
        if isinstance(e, BrokenPipeError):
            raise signals.Stop(signals.CLOSED_PIPE, "output closed") from None
        raise signals.Stop(signals.WRITE_ERROR, f"cannot write output ({e.strerror or e})") from None


def silence(stream) -> None:
    """Point ``stream``'s file descriptor at the null device: nothing written to it fails again."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture), or None
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


LOG_FORMATS = ("text", "json")  # --log-format


def choose_mode(log_format: str, quiet: bool, isatty: bool | None = None) -> str:
    if log_format not in LOG_FORMATS:
        from gpumlp.errors import ConfigError

        raise ConfigError(f"unknown --log-format {log_format!r}: choose text or json")
    if log_format == "json":
        return "json"
    isatty = sys.stdout.isatty() if isatty is None else isatty
    return "bar" if isatty and not quiet else "plain"


def epoch_line(stats, total: int) -> str:
    """``epoch  3/30  loss 0.0587  val loss 0.0612  val acc  93.10%  lr 3  0.54s``"""
    width = len(str(total))
    val = ""
    if stats.val_accuracy is not None:
        val_loss = f"  val loss {stats.val_loss:.4f}" if stats.val_loss is not None else ""
        val = f"{val_loss}  val acc {100 * stats.val_accuracy:6.2f}%"
    return (
        f"epoch {stats.epoch:>{width}}/{total}  loss {stats.train_loss:.4f}{val}  lr {stats.lr:g}  {stats.seconds:.2f}s"
    )


class TrainDisplay:
    """Receives ``log`` messages, ``progress`` updates and ``epoch`` summaries from the training run."""

    def __init__(self, epochs: int, batch_size: int, mode: str, console=None):
        self.epochs, self.batch_size, self.mode = epochs, batch_size, mode
        self._console = console  # a rich Console; tests pass one that records
        self._progress = self._task = None
        self._epoch_start = 0.0

    def log(self, message: str) -> None:
        # A warning goes to stderr unless a live bar holds the terminal: piped, stdout is often a
        # log or another program that would not show it.
        echo(message, err=self.mode == "json" or (self.mode == "plain" and message.startswith("warning:")))

    def progress(self, epoch: int, done: int, n_batches: int, running_loss: float) -> None:
        if self.mode != "bar":
            return
        if self._progress is None:
            self._start_bar(epoch, n_batches)
        elapsed = max(time.perf_counter() - self._epoch_start, 1e-9)
        rate = f"{done * self.batch_size / elapsed:,.0f}"
        self._progress.update(self._task, completed=done, loss=f"{running_loss:.4f}", rate=rate)

    def _start_bar(self, epoch: int, n_batches: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn(f"epoch {epoch:>{len(str(self.epochs))}}/{self.epochs}"),
            BarColumn(),
            TextColumn("{task.fields[rate]} img/s"),
            TimeRemainingColumn(),
            TextColumn("loss {task.fields[loss]}"),
            console=self._console,
            transient=True,  # the bar gives way to the epoch's summary line
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=n_batches, loss="…", rate="…")
        self._epoch_start = time.perf_counter()

    def epoch(self, stats) -> None:
        self.close()
        if self.mode == "json":
            echo(json.dumps({"event": "epoch", **asdict(stats)}))
        elif self._console is not None:
            self._console.print(epoch_line(stats, self.epochs), highlight=False)
        else:
            echo(epoch_line(stats, self.epochs))

    def done(self, test_accuracy: float | None, test_size: int, checkpoint) -> None:
        self.close()
        if self.mode == "json":
            event = {"event": "done", "test_accuracy": test_accuracy, "test_size": test_size}
            echo(json.dumps({**event, "checkpoint": str(checkpoint) if checkpoint else None}))
            return
        if test_accuracy is not None:
            echo(f"test accuracy {100 * test_accuracy:.2f}% ({test_size} images)")
        if checkpoint is not None:
            echo(f"saved {checkpoint}")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:  # an error or Ctrl-C: the bar goes before the message is printed
            self.close()

    def close(self) -> None:
        """Take down a live bar (also on errors and Ctrl-C), leaving the terminal clean."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = self._task = None
