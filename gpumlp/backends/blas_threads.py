"""How many threads the CPU's BLAS uses in a training run: chosen at its start, kept to its end.

``training_threads`` decides: ``GPUMLP_THREADS`` when set; else the count a resumed run's
checkpoint recorded; else ``auto_threads``: the cores this process may use, less those other
programs keep busy right now (/proc/stat over ``LOAD_SAMPLE_S``). BLAS worker threads spin while
they wait for a core, so on a busy machine a product split over every core runs 3–10× slower than
on one thread; and some products (k = 784 and m·n·k large enough for a second thread) round
differently on 1 and 2 threads, which is why a run records its count and a resumed run keeps it.
The counts are set through ctypes in the libraries ``gpumlp.backends.blas`` calls: numpy's OpenBLAS, and
Intel MKL when it serves the products.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import time

from gpumlp.backends.blas import chosen, library_paths, mkl_paths
from gpumlp.errors import ConfigError

THREADS_ENV = "GPUMLP_THREADS"
MAX_THREADS = 1024
# A run whose biggest product of a step is at most this many multiply-adds (batch × n_in × n_out)
# trains on one thread, whatever the load: there a second thread's wake-up and wait cost more than
# it saves, and on one thread a wide batch-10 layer takes OpenBLAS's small-matrix kernel
# (``NumpyBackend.layer_matmul_function``). Measured: docs/speed.md#one-blas-thread-for-small-products
ONE_THREAD_MNK = 4_000_000
LOAD_SAMPLE_S = 0.05  # how long auto_threads watches /proc/stat: 5 ticks per core at 100 Hz
# OpenBLAS's thread-count functions, "{}" standing for get or set: numpy ≥ 2.0 wheels, 1.2x wheels, other builds
_OPENBLAS_THREADS = ("scipy_openblas_{}_num_threads64_", "openblas_{}_num_threads64_", "openblas_{}_num_threads")
_MKL_THREADS = ("MKL_{}_Max_Threads", "MKL_{}_Num_Threads")  # MKL's C API: get, set
_auto: tuple[int, str] | None = None  # auto_threads's choice and why: measured once per process


def _thread_controls(library: str | None = None) -> list:
    """``[(get, set)]`` of the thread count of numpy's OpenBLAS, and of MKL when ``library`` (a
    ``Blas.name``; None: the CPU backend's, ``gpumlp.backends.blas.chosen()``) is MKL: each ``get()`` → int,
    ``set(n)``. Empty where neither is reachable (then threads are the libraries' own)."""
    return _controls_of(chosen().name if library is None else library)


@functools.cache  # looked for once per library and process
def _controls_of(library: str) -> list:
    found = []
    for path in library_paths():
        control = _control(path, [(p.format("get"), p.format("set")) for p in _OPENBLAS_THREADS])
        if control:
            found.append(control)
            break
    if library == "mkl":
        for path in mkl_paths():
            control = _control(path, [(_MKL_THREADS[0].format("Get"), _MKL_THREADS[1].format("Set"))])
            if control:
                found.append(control)
                break
    return found


def _control(path: str, names: list[tuple[str, str]]):
    try:
        lib = ctypes.CDLL(path)  # the library numpy (or gemm) already loaded: the same instance
    except OSError:
        return None
    for get_name, set_name in names:
        get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
        if get is not None and set_ is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            set_.restype, set_.argtypes = None, [ctypes.c_int]
            return get, set_
    return None


def openblas_threads_getter():
    """numpy's OpenBLAS's ``get_num_threads`` (a C function → int, for a check in the hot loop),
    or None where gpumlp cannot reach it."""
    controls = _controls_of("numpy")
    return controls[0][0] if controls else None


def library_threads(library: str | None = None) -> int | None:
    """The thread count numpy's BLAS has now (at start: OPENBLAS_NUM_THREADS's, else every core);
    None where gpumlp cannot reach it. ``library``: as for ``threads``."""
    controls = _thread_controls(library)
    return controls[0][0]() if controls else None


@contextlib.contextmanager
def threads(n: int | None, library: str | None = None):
    """Inside the block the BLAS libraries use ``n`` threads (None: leave them), and afterwards the
    count they had before. The count is the process's, not the calling thread's. ``library``: the
    ``Blas.name`` the caller trains through (None: the CPU backend's)."""
    controls = _thread_controls(library) if n else []
    before = [get() for get, _ in controls]
    for _, set_ in controls:
        set_(int(n))
    try:
        yield
    finally:
        for (_, set_), count in zip(controls, before):
            set_(count)


def threads_from_env(environ=os.environ) -> int | None:
    """``GPUMLP_THREADS`` as a count; None when unset, empty or ``auto``. A bad value raises."""
    raw = environ.get(THREADS_ENV, "").strip()
    if raw.lower() in ("", "auto"):
        return None
    if not re.fullmatch(r"[0-9]+", raw) or not 1 <= int(raw) <= MAX_THREADS:
        raise ConfigError(
            f"{THREADS_ENV}={raw!r} is not a thread count: use a whole number from 1 to {MAX_THREADS}, "
            "or auto (or unset it)"
        )
    return int(raw)


def check_threads(n) -> int:
    """``n`` as a thread count (``--threads``, a config file's ``threads``); a bad one raises."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS:
        raise ConfigError(f"--threads must be a whole number from 1 to {MAX_THREADS} (got {n!r})")
    return n


def threads_rule(cores: int, busy: float) -> int:
    """BLAS threads for ``cores`` usable cores of which other processes keep ``busy`` (0 to cores)
    busy: one per core left free, at least one. A BLAS thread that shares its core with another
    program waits whole time slices, and the product waits for its slowest thread."""
    return max(1, min(cores, int(cores - busy + 0.5)))


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def _cpu_ticks(cpus: list[int], stat: str = "/proc/stat") -> tuple[int, int] | None:
    """(busy, total) ticks since boot summed over ``cpus`` from /proc/stat; None without it."""
    try:
        with open(stat) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted, busy, total = {f"cpu{i}" for i in cpus}, 0, 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            busy += sum(ticks) - ticks[3] - ticks[4]
            total += sum(ticks)
    return (busy, total) if total else None


def busy_cores(cpus: list[int], seconds: float = LOAD_SAMPLE_S, ticks=_cpu_ticks) -> float | None:
    """How many of ``cpus`` other processes keep busy: their busy share over ``seconds`` (this
    process sleeps meanwhile) times their number; None where the kernel does not say (no /proc)."""
    a = ticks(cpus)
    time.sleep(seconds)
    b = ticks(cpus)
    if a is None or b is None or b[1] <= a[1]:
        return None
    return len(cpus) * (b[0] - a[0]) / (b[1] - a[1])


def auto_threads(refresh: bool = False, measure=busy_cores) -> tuple[int, str]:
    """``(count, why)`` by ``threads_rule`` from the cores this process may use (at most the count
    numpy's BLAS started with, so OPENBLAS_NUM_THREADS still caps it) and the load measured now.
    Measured once per process (``refresh`` measures again), so that every run of one process trains
    with one count."""
    global _auto
    if _auto is None or refresh:
        cpus = usable_cpus()
        cores = min(len(cpus), _initial_threads() or len(cpus))
        busy = measure(cpus) if cores > 1 else 0.0
        n = threads_rule(cores, busy or 0.0)
        load = "load unknown" if busy is None else f"{busy:.1f} busy with other programs"
        _auto = n, f"auto: {cores} core{'s' if cores != 1 else ''}, {load}"
    return _auto


_initial: list = []  # the BLAS's thread count when gpumlp first asked


def _initial_threads() -> int | None:
    if not _initial:
        _initial.append(library_threads())
    return _initial[0]


def default_threads() -> int | None:
    """The count numpy's BLAS starts with (OPENBLAS_NUM_THREADS's, else every core): what every CPU
    run trained with before gpumlp chose, so what resuming such a run's checkpoint keeps."""
    return _initial_threads()


def largest_product(sizes, batch_size: int) -> int:
    """Multiply-adds of the biggest product of a training step: batch × n_in × n_out of the widest layer."""
    return int(batch_size) * max(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def training_threads(
    recorded: int | None = None, largest: int | None = None, forced: int | None = None, forced_by: str = "--threads"
) -> tuple[int, str]:
    """``(count, why)``: the BLAS threads of a CPU run. ``forced`` when given, said to come from
    ``forced_by`` (``gpumlp train --threads``, or ``threads in FILE`` of its config file); else
    ``GPUMLP_THREADS`` when set; else
    ``recorded``, the count a resumed run trained with (the same count gives the same bits);
    else ``auto_threads``, or one thread when the run's biggest product (``largest``, from
    ``largest_product``) is at most ``ONE_THREAD_MNK``."""
    if forced is not None:
        return check_threads(forced), forced_by
    forced = threads_from_env()
    if forced is not None:
        return forced, THREADS_ENV
    if recorded:
        return int(recorded), "as the resumed run"
    n, why = auto_threads()
    if n > 1 and largest is not None and largest <= ONE_THREAD_MNK:
        return 1, f"{why}; 1 for products this small"
    return n, why
