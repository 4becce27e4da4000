"""Every way a long command can be told to stop, as one exception: ``Stop``.

SIGINT (Ctrl-C) is Python's own ``KeyboardInterrupt``; ``stop_on_signals`` makes SIGTERM (``timeout``,
``docker stop``, systemd, Slurm's preemption) and SIGHUP (a closed terminal) raise ``Stop``, a
``KeyboardInterrupt`` too, so the code that keeps a run's epochs on Ctrl-C keeps them for these as
well. A closed output (``| head -1``) or one that cannot be written (a full disk) is a ``Stop`` the
code writing the output raises. ``deferred`` holds all three signals back while a file is written.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

# The exit status a shell reports for a program killed by each signal: 128 + its number.
SIGNALS = {s: n for n, s in ((130, signal.SIGINT), (143, signal.SIGTERM), (129, getattr(signal, "SIGHUP", None)))}
SIGNALS.pop(None, None)  # no SIGHUP on Windows
CLOSED_PIPE = 141  # as for a program killed by SIGPIPE
WRITE_ERROR = 2


class Stop(KeyboardInterrupt):
    """A request to stop now, keeping what is done: ``exit_code`` to exit with, ``why`` to say
    (``"interrupted"`` for Ctrl-C, which a bare ``KeyboardInterrupt`` also means)."""

    def __init__(self, exit_code: int = 130, why: str = "interrupted"):
        super().__init__(why)
        self.exit_code, self.why = exit_code, why


def for_signal(signum: int) -> Stop:
    if signum == signal.SIGINT:
        return Stop()
    return Stop(SIGNALS.get(signum, 128 + signum), f"interrupted by {signal.Signals(signum).name}")


def exit_code(e: BaseException) -> int:
    """The exit status for a stop: ``e``'s own, 130 for a plain ``KeyboardInterrupt``."""
    return getattr(e, "exit_code", 130)


def why(e: BaseException) -> str:
    return getattr(e, "why", "interrupted")


def _is_ours(handler) -> bool:
    """Whether ``handler`` turns its signal into an exception (Python's for SIGINT, ours for the others)."""
    return handler is signal.default_int_handler or getattr(handler, "raises_stop", False)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[Stop]]:
    """Inside the block, SIGTERM and SIGHUP raise ``Stop`` as Ctrl-C raises ``KeyboardInterrupt``
    (main thread only; signals a caller chose to ignore stay ignored). Yields the list of the stops
    raised, for a caller that code between it and the signal (typer) tells only "exit 130"."""
    raised: list[Stop] = []
    if threading.current_thread() is not threading.main_thread():
        yield raised
        return

    def raise_stop(signum, frame):
        raised.append(for_signal(signum))
        raise raised[-1]

    raise_stop.raises_stop = True
    previous = {}
    for s in SIGNALS:
        if s != signal.SIGINT and signal.getsignal(s) is not signal.SIG_IGN:
            previous[s] = signal.signal(s, raise_stop)
    try:
        yield raised
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class DeferredInterrupt(Stop):
    """A stop signal held back by ``deferred``, raised once its block had completed."""


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold back SIGINT, SIGTERM and SIGHUP inside the block and raise ``DeferredInterrupt`` (for
    the first of them) when it ends. Only signals that would raise here (the main thread, the
    default SIGINT handler, ``stop_on_signals``'s); anywhere else the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    previous = {s: h for s, h in previous.items() if _is_ours(h)}
    for s in previous:
        signal.signal(s, lambda signum, _: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        first = for_signal(caught[0])
        raise DeferredInterrupt(first.exit_code, first.why)


def ignore_all() -> None:
    """Ignore the stop signals from now on (once a command is done and has said so)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
