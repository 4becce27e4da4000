"""A first epoch that will take over a minute is announced, once, timed over its first batches."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import gpumlp
from gpumlp.cli import commands as cli
from gpumlp.training import estimate
from gpumlp.training.estimate import EpochEstimate, duration


class Clock:
    """A stand-in clock: each mark of the estimate reads the next time."""

    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def marks(n_batches=1000, every=20, epochs_left=30, clock=None):
    lines, syncs, reports = [], [], []
    est = EpochEstimate(lambda: syncs.append(1), lines.append, n_batches, every, epochs_left, clock)
    report = est.report(reports.append, epoch=1)
    for batch in range(every, n_batches + 1, every):
        report(batch)
    return est, lines, syncs, reports


def test_a_long_first_epoch_is_announced_once_with_the_run():
    # start at 0; batch 20 at 5 s (the first batches' one-time costs); batch 40 at 7.4 s: 120 ms a batch,
    # so 7.4 + 960 × 0.12 = 123 s an epoch, 3,678 s for 30
    est, lines, syncs, reports = marks(clock=Clock(0.0, 5.0, 7.4))
    assert lines == ["epoch 1 will take about 2 min (1,000 batches at 120 ms each); 30 epochs about 61 min"]
    assert len(syncs) == 2 and reports == list(range(20, 1001, 20))  # the caller's reports all pass
    caller = object()
    assert est.report(caller, epoch=2) is caller  # later epochs are not timed


def test_a_short_epoch_says_nothing():
    _, lines, syncs, _ = marks(clock=Clock(0.0, 5.0, 6.0))  # 50 ms a batch: 7 + 48 s
    assert lines == [] and len(syncs) == 2


def test_too_few_batches_to_time_are_not_timed():
    est = EpochEstimate(lambda: None, print, n_batches=3, every=2, epochs_left=1)
    assert est.report(None, 1) is None


def test_durations_read_as_estimates():
    assert [duration(s) for s in (42.4, 150, 5399, 5400 * 2)] == [
        "about 42 s",
        "about 2 min",
        "about 90 min",
        "about 3.0 h",
    ]


@pytest.fixture
def small(mnist):
    X, y = mnist[0], mnist[1]
    return X[:2000], y[:2000]


def test_fit_announces_through_its_log_before_the_first_epoch_ends(small, monkeypatch):
    X, y = small
    events = []
    monkeypatch.setattr(estimate, "LONG_EPOCH_S", 0.0)  # every epoch is long
    model = gpumlp.MLP((784, 32, 10), "relu", "ce", seed=0)
    gpumlp.fit(model, X, y, epochs=3, batch_size=10, lr=0.1, log=events.append, on_epoch=events.append, verbose=0)
    assert isinstance(events[0], str) and events[0].startswith("epoch 1 will take about ")
    assert "(200 batches at " in events[0] and "; 3 epochs about " in events[0]
    assert [type(e).__name__ for e in events[1:]] == ["EpochStats"] * 3  # once, before epoch 1 ended


def test_fit_at_the_real_threshold_stays_quiet(small):
    X, y = small
    lines = []
    gpumlp.fit(gpumlp.MLP((784, 32, 10), "relu", "ce"), X, y, epochs=1, batch_size=10, lr=0.1, log=lines.append)
    assert lines == []


def test_gpumlp_train_prints_the_estimate(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(estimate, "LONG_EPOCH_S", 0.0)
    args = ["train", "--epochs", "1", "--train-size", "1000", "--val-size", "100", "--test-size", "100",
            "--data-dir", str(mnist_dir), "--save", str(tmp_path / "n.npz")]  # fmt: skip
    out = CliRunner().invoke(cli.app, args)
    assert out.exit_code == 0, out.output
    assert sum(line.startswith("epoch 1 will take about ") for line in out.output.splitlines()) == 1
