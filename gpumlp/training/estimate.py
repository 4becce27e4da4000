"""A run's first epoch, timed over its first batches: when it will take over a minute, one line
says so before the wait (``epoch 1 will take about 6 min (5,000 batches at 72 ms each); 30 epochs
about 3.0 h``), through the run's ``log``."""

from __future__ import annotations

import time
from collections.abc import Callable

LONG_EPOCH_S = 60.0  # seconds: a first epoch projected to take longer is announced


def duration(seconds: float) -> str:
    """``"about 40 s"``, ``"about 6 min"``, ``"about 3.0 h"``: a projection, rounded as one."""
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"about {max(1, round(seconds / 60))} min"
    return f"about {seconds / 3600:.1f} h"


class EpochEstimate:
    """Times the batches between the first epoch's first two progress marks (every ``every``
    batches: past the first batch's one-time costs, about 4% into the epoch), projects the epoch
    from them, and when that exceeds ``threshold`` seconds says so, once, through ``log``. Each mark
    is a sync point (``synchronize``), twice a run; afterwards the marks only pass calls on."""

    def __init__(
        self,
        synchronize: Callable[[], None],
        log: Callable[[str], None],
        n_batches: int,
        every: int,
        epochs_left: int,
        clock: Callable[[], float] = time.perf_counter,
        threshold: float | None = None,
    ):
        self.synchronize, self.log, self.clock = synchronize, log, clock
        self.n_batches, self.every, self.epochs_left = n_batches, every, epochs_left
        self.threshold = LONG_EPOCH_S if threshold is None else threshold
        self.started = False

    def report(self, report: Callable[[int], None] | None, epoch: int) -> Callable[[int], None] | None:
        """The epoch's ``report(batches_done)``, timed when ``epoch`` is the run's first (called as it starts)."""
        if self.started or 2 * self.every > self.n_batches:  # a later epoch, or too few batches to time
            return report
        self.started = True
        marks = [(0, self.clock())]

        def timed(batch: int) -> None:
            if report is not None:
                report(batch)
            if len(marks) < 3:
                self.synchronize()  # a sync point: the batches queued so far are done
                marks.append((batch, self.clock()))
                if len(marks) == 3:
                    self._project(epoch, marks)

        return timed

    def _project(self, epoch: int, marks: list[tuple[int, float]]) -> None:
        (_, t0), (b1, t1), (b2, t2) = marks
        per_batch = (t2 - t1) / (b2 - b1)
        seconds = (t2 - t0) + per_batch * (self.n_batches - b2)
        if seconds <= self.threshold:
            return
        each = f"{self.n_batches:,} batches at {1000 * per_batch:.0f} ms each"
        line = f"epoch {epoch} will take {duration(seconds)} ({each})"
        if self.epochs_left > 1:
            line += f"; {self.epochs_left} epochs {duration(seconds * self.epochs_left)}"
        self.log(line)
