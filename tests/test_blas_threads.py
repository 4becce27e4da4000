"""The BLAS threads of a CPU run (gpumlp.backends.blas_threads): the rule on stand-in load readings,
GPUMLP_THREADS, and setting numpy's OpenBLAS. That a run records its count and a resumed run keeps
it is in test_resume.py; the CLI's one-line errors in test_cli.py."""

from __future__ import annotations

import numpy as np
import pytest

from gpumlp.backends import blas_threads
from gpumlp.errors import ConfigError


def numpy_blas_is_openblas() -> bool:
    return "openblas" in np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]


@pytest.mark.parametrize(
    "cores, busy, expected",
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.0, 1), (1, 0.0, 1), (16, 1.0, 15), (4, 9.0, 1)],
)
def test_threads_rule_leaves_the_busy_cores_alone(cores, busy, expected):
    assert blas_threads.threads_rule(cores, busy) == expected


def test_busy_cores_from_two_proc_stat_readings(tmp_path):
    """Ticks of the usable CPUs only: the machine-wide line and other CPUs are not counted."""
    stat = tmp_path / "stat"
    readings = [
        # cpu user nice system idle iowait irq softirq steal (guest guest_nice)
        "cpu  999 0 0 0 0 0 0 0 0 0\ncpu0 100 0 0 900 0 0 0 0 0 0\ncpu1 50 0 50 900 0 0 0 0\ncpu2 0 0 0 5 0 0 0 0\n",
        "cpu  999 0 0 0 0 0 0 0 0 0\ncpu0 110 0 0 900 0 0 0 0 0 0\ncpu1 50 0 50 905 5 0 0 0\ncpu2 9 0 0 5 0 0 0 0\n",
    ]

    def ticks(cpus):
        stat.write_text(readings.pop(0))
        return blas_threads._cpu_ticks(cpus, str(stat))

    # cpu0 busy 10 of 10 ticks, cpu1 idle (idle and iowait) 10 of 10: one of the two cores is busy
    assert blas_threads.busy_cores([0, 1], seconds=0, ticks=ticks) == pytest.approx(1.0)
    assert blas_threads._cpu_ticks([0], str(tmp_path / "absent")) is None
    assert blas_threads.busy_cores([0], seconds=0, ticks=lambda cpus: None) is None


def test_auto_threads_from_stand_in_load_readings(monkeypatch):
    monkeypatch.setattr(blas_threads, "_auto", None)  # the process's measured choice comes back after the test
    monkeypatch.setattr(blas_threads, "usable_cpus", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(blas_threads, "_initial_threads", lambda: 4)
    assert blas_threads.auto_threads(True, measure=lambda cpus: 0.1) == (
        4,
        "auto: 4 cores, 0.1 busy with other programs",
    )
    assert blas_threads.auto_threads(True, measure=lambda cpus: 2.8)[0] == 1
    assert blas_threads.auto_threads(measure=lambda cpus: 0.0)[0] == 1, "measured once per process, unless refreshed"
    assert blas_threads.auto_threads(True, measure=lambda cpus: None) == (4, "auto: 4 cores, load unknown")
    monkeypatch.setattr(blas_threads, "_initial_threads", lambda: 2)  # OPENBLAS_NUM_THREADS=2 caps the choice
    assert blas_threads.auto_threads(True, measure=lambda cpus: 0.0)[0] == 2


@pytest.mark.parametrize("value, expected", [(None, None), ("", None), (" auto ", None), ("1", 1), ("12", 12)])
def test_gpumlp_threads_values(monkeypatch, value, expected):
    env = {} if value is None else {"GPUMLP_THREADS": value}
    assert blas_threads.threads_from_env(env) == expected


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "2000", "٣", "1 2"])
def test_a_bad_gpumlp_threads_names_the_fix(value):
    with pytest.raises(ConfigError, match=r"GPUMLP_THREADS='.*' is not a thread count: use a whole number from 1"):
        blas_threads.threads_from_env({"GPUMLP_THREADS": value})


def test_a_run_of_small_products_takes_one_thread_unless_told_otherwise(monkeypatch):
    """Auto gives one thread to a run whose biggest product is at most ONE_THREAD_MNK multiply-adds
    (784-300-100-50-10 at batch 10), the cores' count to bigger ones; GPUMLP_THREADS and a resumed
    run's count still win."""
    monkeypatch.setattr(blas_threads, "_auto", (2, "auto: stand-in"))
    monkeypatch.delenv("GPUMLP_THREADS", raising=False)
    small = blas_threads.largest_product((784, 300, 100, 50, 10), 10)
    big = blas_threads.largest_product((784, 512, 10), 128)
    assert small == 10 * 784 * 300 <= blas_threads.ONE_THREAD_MNK < 128 * 784 * 512 == big
    assert blas_threads.training_threads(None, small) == (1, "auto: stand-in; 1 for products this small")
    assert blas_threads.training_threads(None, big) == (2, "auto: stand-in")
    assert blas_threads.training_threads(2, small) == (2, "as the resumed run")
    monkeypatch.setenv("GPUMLP_THREADS", "2")
    assert blas_threads.training_threads(None, small) == (2, "GPUMLP_THREADS")


def test_training_threads_env_then_recorded_then_auto(monkeypatch):
    monkeypatch.setattr(blas_threads, "_auto", (2, "auto: stand-in"))
    monkeypatch.delenv("GPUMLP_THREADS", raising=False)
    assert blas_threads.training_threads() == (2, "auto: stand-in")
    assert blas_threads.training_threads(recorded=1) == (1, "as the resumed run")
    monkeypatch.setenv("GPUMLP_THREADS", "3")
    assert blas_threads.training_threads(recorded=1) == (3, "GPUMLP_THREADS")
    assert blas_threads.training_threads(recorded=1, forced=2) == (2, "--threads")  # asked for: wins over both
    assert blas_threads.training_threads(forced=2, forced_by="threads in run.toml") == (2, "threads in run.toml")
    for bad in (0, 1025, 2.0, True, "2"):
        with pytest.raises(ConfigError, match=r"^--threads must be a whole number from 1 to 1024"):
            blas_threads.training_threads(forced=bad)


@pytest.mark.skipif(not numpy_blas_is_openblas(), reason="numpy here is not built on its bundled OpenBLAS")
def test_threads_sets_numpys_openblas_and_restores_it():
    before = blas_threads.library_threads()
    assert before is not None and before >= 1
    with blas_threads.threads(1):
        assert blas_threads.library_threads() == 1
        with blas_threads.threads(3):
            assert blas_threads.library_threads() == 3
        assert blas_threads.library_threads() == 1
    assert blas_threads.library_threads() == before
    with blas_threads.threads(None):  # a GPU run: the BLAS is left as it is
        assert blas_threads.library_threads() == before
