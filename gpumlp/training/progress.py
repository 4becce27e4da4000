"""What ``gpumlp.fit`` shows while it trains, as Keras's ``model.fit(verbose=…)`` does: a live bar
per epoch on a terminal (``verbose=1``), one line per epoch (``2``), or nothing (``0``). Built on
fit's own ``on_progress`` and ``on_epoch`` callbacks, which the caller's still receive.

    epoch 2/3 [=========>..........] 198/391  ETA 1s  loss 0.1302
    epoch 2/3  loss 0.1187  val loss 0.1072  val acc  96.85%  2.41s
"""

from __future__ import annotations

import functools
import shutil
import sys
import time
from collections.abc import Callable

from gpumlp.errors import ConfigError

AUTO = "auto"  # a live bar where the output is a terminal (or a Jupyter notebook), else nothing
BAR = 20  # characters of the bar


def shows_live(stream) -> bool:
    """Whether ``stream`` redraws a line on a carriage return: a terminal, or a Jupyter kernel's output."""
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed, or not a file
        tty = False
    return tty or type(stream).__module__.startswith("ipykernel")


def verbosity(verbose, stream) -> int:
    """0, 1 or 2 for fit's ``verbose`` (``"auto"``: 1 where ``stream`` shows a live bar, else 0)."""
    if verbose == AUTO:
        return 1 if shows_live(stream) else 0
    if isinstance(verbose, str) or verbose not in (0, 1, 2):
        raise ConfigError(
            f"verbose must be 0 (silent), 1 (a progress bar), 2 (a line per epoch) or 'auto' (got {verbose!r})"
        )
    return int(verbose)


class ProgressBar:
    """Receives fit's ``progress(epoch, batches_done, n_batches, running_loss)`` and ``epoch(stats)``
    calls and writes them to ``stream``: a bar redrawn in place (``live``), and each epoch's summary line."""

    def __init__(self, epochs: int, live: bool, stream=None, clock: Callable[[], float] = time.monotonic):
        self.epochs, self.live, self.clock = epochs, live, clock
        self.stream = stream if stream is not None else sys.stderr
        self._first = None  # (epoch, batches done, time) of the epoch's first report: the rate's origin
        self._drawn = 0  # characters of the bar now on the line (0: none)

    def progress(self, epoch: int, done: int, n_batches: int, loss: float) -> None:
        now = self.clock()
        if self._first is None or self._first[0] != epoch:
            self._first = (epoch, done, now)
        _, done0, t0 = self._first
        eta = f"  ETA {(n_batches - done) * (now - t0) / (done - done0):.0f}s" if done > done0 else ""
        filled = BAR * done // n_batches
        bar = "=" * filled + (">" if filled < BAR else "") + "." * (BAR - filled - 1)
        line = f"{self._epoch(epoch)} [{bar}] {done}/{n_batches}{eta}  loss {loss:.4f}"
        line = line[: max(shutil.get_terminal_size().columns - 1, 20)]
        self._write("\r" + line.ljust(self._drawn))
        self._drawn = len(line)

    def epoch(self, stats) -> None:
        val = ""
        if stats.val_accuracy is not None:
            val_loss = f"  val loss {stats.val_loss:.4f}" if stats.val_loss is not None else ""
            val = f"{val_loss}  val acc {100 * stats.val_accuracy:6.2f}%"
        line = f"{self._epoch(stats.epoch)}  loss {stats.train_loss:.4f}{val}  {stats.seconds:.2f}s"
        self._write(("\r" if self._drawn else "") + line.ljust(self._drawn) + "\n")
        self._drawn, self._first = 0, None

    def notes(self, log: Callable[[str], None] | None) -> Callable[[str], None]:
        """fit's ``log`` (None: a line on stderr) that first clears a bar left mid-line, so a note
        (``epoch 1 will take about 6 min …``) gets a line of its own; the next report redraws the bar."""

        def note(line: str) -> None:
            if self._drawn:
                self._write("\r" + " " * self._drawn + "\r")
                self._drawn = 0
            log(line) if log is not None else print(line, file=sys.stderr)

        return note

    def close(self) -> None:
        """End a bar left half-drawn (an error, or Ctrl-C) with its line, so what follows starts clean."""
        if self._drawn:
            self._write("\n")
            self._drawn = 0

    def _epoch(self, epoch: int) -> str:
        return f"epoch {epoch:>{len(str(self.epochs))}}/{self.epochs}"

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _both(first: Callable | None, second: Callable | None) -> Callable | None:
    if first is None or second is None:
        return first or second

    def both(*args) -> None:
        first(*args)
        second(*args)

    return both


def with_progress(fit):
    """``fit(…, verbose=…)``: a ``ProgressBar`` on stderr for verbose 1 or 2, its calls made before
    the caller's own ``on_progress`` and ``on_epoch``; the bar reads the running loss ~50 times an
    epoch (a sync point each, as any ``on_progress`` does)."""

    @functools.wraps(fit)
    def wrapper(model, *args, verbose=AUTO, on_epoch=None, on_progress=None, **kwargs):
        level = verbosity(verbose, sys.stderr)
        if not level:
            return fit(model, *args, on_epoch=on_epoch, on_progress=on_progress, **kwargs)
        bar = ProgressBar(kwargs["epochs"], live=level == 1)
        if bar.live:
            kwargs["log"] = bar.notes(kwargs.get("log"))
        try:
            progress = _both(bar.progress if bar.live else None, on_progress)
            return fit(model, *args, on_epoch=_both(bar.epoch, on_epoch), on_progress=progress, **kwargs)
        finally:
            bar.close()

    return wrapper
