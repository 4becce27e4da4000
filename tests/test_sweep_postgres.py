"""gpumlp sweep on a real PostgreSQL server (tests/standins/postgres.py): two commands, as two
machines would run them, share one study and finish exactly the trials asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

SPACE = """
[fixed]
epochs = 2
layers = "784,32,10"
activation = "relu"
loss = "ce"
train-size = 1000
val-size = 300
[search]
lr = { low = 0.01, high = 0.5, log = true }
batch-size = { choices = [32, 64] }
"""


def test_two_commands_share_one_study_in_postgresql(postgres_db_url, tmp_path, mnist_dir):
    (tmp_path / "space.toml").write_text(SPACE)
    plain = postgres_db_url.replace("postgresql+psycopg://", "postgresql://")  # as a user writes it
    args = [sys.executable, "-m", "gpumlp", "sweep", "run", "space.toml", "--study", "pg", "--storage", plain,
            "--trials", 6, "--heartbeat", 2]  # fmt: skip
    procs = [subprocess.Popen(list(map(str, args)), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = optuna.load_study(study_name="pg", storage=postgres_db_url).get_trials(deepcopy=False)
    assert len(trials) == 6 and sorted(t.number for t in trials) == list(range(6))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    show = subprocess.run([sys.executable, "-m", "gpumlp", "sweep", "show", "pg", "--storage", plain],
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert show.returncode == 0 and "study pg in postgresql+psycopg://" in show.stdout, show.stderr
