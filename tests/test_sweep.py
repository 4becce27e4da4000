"""gpumlp sweep for real: worker processes training tiny networks on real MNIST images in an SQLite
study; exactly the trials asked for, however many processes share the study, through pruning,
Ctrl-C and a worker killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from standins.entry_point import run_main  # noqa: E402

SPACE = """
[fixed]
epochs = {epochs}
layers = "784,32,10"
activation = "relu"
loss = "ce"
train-size = {train}
val-size = 300
optimizer = "momentum"
[search]
lr = {{ low = 0.000001, high = 0.5, log = true }}
batch-size = {{ choices = [32, 64] }}
momentum = {{ low = 0.0, high = 0.9 }}
"""


@pytest.fixture
def sweep_dir(tmp_path, monkeypatch, mnist_dir):
    """A folder to sweep in (the working directory), with a space file of tiny fast trials."""
    monkeypatch.chdir(tmp_path)
    space(tmp_path, epochs=2, train=1000)
    return tmp_path


def space(folder, epochs: int, train: int, name: str = "space.toml"):
    (folder / name).write_text(SPACE.format(epochs=epochs, train=train))
    return folder / name


def trials(folder, study: str = "s", db: str | None = None):
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'sweeps' / f'{study}.db'}" if db is None else db)
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def finished(ts) -> list:
    return [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def gpumlp(*args) -> list[str]:
    return [sys.executable, "-m", "gpumlp", *map(str, args)]


def test_two_jobs_finish_exactly_the_trials_asked_for(sweep_dir, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "sweep", "run", "space.toml", "--study", "s", "--trials", 8,
                              "--jobs", 2, "--heartbeat", 2)  # fmt: skip
    assert code == 0, err
    ts = trials(sweep_dir)
    assert len(finished(ts)) == 8 == len(ts)  # nothing failed, nothing extra
    assert sorted(t.number for t in ts) == list(range(8))
    for t in ts:
        assert 1e-6 <= t.params["lr"] <= 0.5 and 0 <= t.params["momentum"] <= 0.9
        assert t.params["batch-size"] in (32, 64)
        assert 1 <= t.user_attrs["threads"] <= max(1, len(os.sched_getaffinity(0)) // 2)  # the free cores ÷ 2
    lines = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len(lines) == 8  # one line per finished trial off a terminal
    assert "trials 8/8" in out
    kept = list((sweep_dir / "sweeps" / "s").glob("*.npz"))  # --keep best: only the best network
    best = max((t for t in ts if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    assert [p.name for p in kept] == [f"trial-{best.number}.npz"]
    assert best.user_attrs["checkpoint"]["path"] == str(kept[0])
    from gpumlp import evaluate, load
    from gpumlp.data.load import load_dataset

    X, y, _, _ = load_dataset("mnist")
    model, _ = load(kept[0])
    assert evaluate(model, X[1000:1300], y[1000:1300]) == best.value  # the validation images, the same network
    # the same command again: the study already has its total
    code, out, err = run_main(monkeypatch, capsys, "sweep", "run", "space.toml", "--study", "s", "--trials", 8)
    assert code == 0 and len(trials(sweep_dir)) == 8


def test_a_poor_trial_is_pruned(sweep_dir, monkeypatch, capsys):
    from gpumlp.sweep.space import read_space
    from gpumlp.sweep.study import open_storage, open_study

    (sweep_dir / "sweeps").mkdir()
    study = open_study(open_storage("sqlite:///sweeps/s.db"), "s", read_space("space.toml"))
    study.enqueue_trial({"lr": 0.3, "batch-size": 32, "momentum": 0.5})  # learns
    study.enqueue_trial({"lr": 1e-6, "batch-size": 32, "momentum": 0.0})  # cannot: pruned after epoch 1
    code, out, err = run_main(monkeypatch, capsys, "sweep", "run", "space.toml", "--study", "s", "--trials", 2,
                              "--pruner", "halving")  # fmt: skip
    assert code == 0, err
    ts = trials(sweep_dir)
    assert [t.state for t in ts] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert ts[1].user_attrs["epochs"] == 1 and "pruned" in out


def test_a_trial_is_never_pruned_after_its_last_epoch(sweep_dir, monkeypatch, capsys):
    """Pruning saves the epochs still to come: after the last one, a poor trial is a complete one."""
    from gpumlp.sweep.space import read_space
    from gpumlp.sweep.study import open_storage, open_study

    space(sweep_dir, epochs=1, train=1000)
    (sweep_dir / "sweeps").mkdir()
    study = open_study(open_storage("sqlite:///sweeps/s.db"), "s", read_space("space.toml"))
    study.enqueue_trial({"lr": 0.3, "batch-size": 32, "momentum": 0.5})
    study.enqueue_trial({"lr": 1e-6, "batch-size": 32, "momentum": 0.0})  # as poor as above, but done
    code, _, err = run_main(monkeypatch, capsys, "sweep", "run", "space.toml", "--study", "s", "--trials", 2,
                            "--pruner", "halving")  # fmt: skip
    assert code == 0, err
    assert [t.state for t in trials(sweep_dir)] == [TrialState.COMPLETE, TrialState.COMPLETE]


def test_a_study_of_another_space_is_refused(sweep_dir, monkeypatch, capsys):
    args = ("sweep", "run", "space.toml", "--study", "s", "--trials", 1, "--keep", "none")
    assert run_main(monkeypatch, capsys, *args)[0] == 0
    assert not (sweep_dir / "sweeps" / "s").exists()  # --keep none: no network saved
    code, out, err = run_main(monkeypatch, capsys, "sweep", "show", "s", "--json")
    d = json.loads(out)  # one complete trial: no importance yet, and why
    assert d["importances"] is None and d["importances_note"] == "needs at least two complete trials"
    space(sweep_dir, epochs=3, train=1000, name="other.toml")
    code, _, err = run_main(monkeypatch, capsys, "sweep", "run", "other.toml", "--study", "s", "--trials", 2)
    assert code == 2 and "was made for another space" in err and err.count("\n") == 1
    assert len(trials(sweep_dir)) == 1


def test_show_and_json(sweep_dir, monkeypatch, capsys):
    assert run_main(monkeypatch, capsys, "sweep", "run", "space.toml", "--study", "s", "--trials", 3)[0] == 0
    code, out, err = run_main(monkeypatch, capsys, "sweep", "show", "s", "--top", 2)
    assert code == 0, err
    assert out.startswith("study s in sqlite:///sweeps/s.db: ")
    assert "val acc" in out and "batch-size" in out and "best network (trial" in out and "importance" in out
    code, out, err = run_main(monkeypatch, capsys, "sweep", "show", "s", "--json")
    d = json.loads(out)
    complete = [t for t in trials(sweep_dir) if t.state == TrialState.COMPLETE]
    assert [r["number"] for r in d["best"]][0] == max(complete, key=lambda t: (t.value, -t.number)).number
    assert set(d["importances"] or {}) <= {"lr", "batch-size", "momentum"}
    assert d["best"][0]["checkpoint"]["exists"] is True
    code, out, err = run_main(monkeypatch, capsys, "sweep", "show", "s", "--plot", "plots")
    assert code == 0, err
    for name in ("history.png", "importance.png"):
        assert (sweep_dir / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"saved plots/{name}" in out
    code, _, err = run_main(monkeypatch, capsys, "sweep", "show", "nothing")
    assert code == 2 and "no study 'nothing' here" in err and err.count("\n") == 1


def test_two_commands_share_one_study(sweep_dir):
    """Two ``gpumlp sweep run`` processes on one SQLite file, as two machines on one database."""
    args = gpumlp("sweep", "run", "space.toml", "--study", "s", "--trials", 6, "--heartbeat", 2)
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ts = trials(sweep_dir)
    assert len(ts) == 6 == len(finished(ts)) and sorted(t.number for t in ts) == list(range(6))


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def running(folder):
    if not (folder / "sweeps" / "s.db").exists():
        return []
    try:
        return [t for t in trials(folder) if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
    except Exception:  # (KeyError, SQLAlchemy's errors) the study is being created
        return []


def test_a_worker_killed_mid_trial_is_retried_and_the_study_reaches_its_total(sweep_dir):
    space(sweep_dir, epochs=50, train=1500)  # trials of a second or so
    proc = subprocess.Popen(gpumlp("sweep", "run", "space.toml", "--study", "s", "--trials", 2, "--heartbeat", 2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    training = lambda: [t for t in running(sweep_dir) if t.intermediate_values]  # noqa: E731  (an epoch reported)
    victim = wait_for(training)[0]
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)  # the worker, not the command
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    ts = trials(sweep_dir)
    assert len(finished(ts)) == 2
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [victim.number]
    retry = [t for t in ts if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry[0].params == victim.params


@pytest.mark.parametrize("stop,code,said,jobs", [(signal.SIGINT, 130, "interrupted: ", 2),
                                                  (signal.SIGTERM, 143, "interrupted by SIGTERM: ", 1)])  # fmt: skip
def test_ctrl_c_fails_the_running_trial_and_the_same_command_goes_on(sweep_dir, stop, code, said, jobs):
    space(sweep_dir, epochs=20, train=1500)  # stopped within a moment of its claim: a short trial will do
    args = gpumlp("sweep", "run", "space.toml", "--study", "s", "--trials", 2, "--jobs", jobs)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: running(sweep_dir))
    t0 = time.monotonic()
    proc.send_signal(stop)  # to the command only, not to its workers
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == code, (out, err)
    assert took < 10, took  # a second or two, unless the computer is very busy
    assert err.startswith(said) and "run the same command to go on" in err
    ts = trials(sweep_dir)
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)], (took, ts)
    assert [t for t in ts if t.state == TrialState.FAIL], ts
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(finished(trials(sweep_dir))) == 2


def test_the_best_trial_trains_again_bit_for_bit_from_its_config_file(sweep_dir, monkeypatch, capsys):
    assert run_main(monkeypatch, capsys, "sweep", "run", "space.toml", "--study", "s", "--trials", 2)[0] == 0
    code, out, err = run_main(monkeypatch, capsys, "sweep", "best", "s", "--out", "best.toml")
    assert code == 0, err
    best = max((t for t in trials(sweep_dir) if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    text = (sweep_dir / "best.toml").read_text()
    assert f"trial {best.number}" in text and f"threads = {best.user_attrs['threads']}" in text
    assert "seed = 0" in text and "epochs = 2" in text and "train-size = 1000" in text
    code, out, err = run_main(monkeypatch, capsys, "train", "--config", "best.toml", "--log-format", "json",
                              "--test-size", 100, "--save", "again.npz")  # fmt: skip
    assert code == 0, err
    epochs = [json.loads(line) for line in out.splitlines() if '"event": "epoch"' in line]
    assert epochs[-1]["val_accuracy"] == best.value  # the same seed, threads and images: the same bits
    code, _, err = run_main(monkeypatch, capsys, "sweep", "best", "nothing", "--out", "x.toml")
    assert code == 2 and err.count("\n") == 1 and not (sweep_dir / "x.toml").exists()


def test_a_combination_train_refuses_fails_its_trial_and_stops_the_sweep_in_one_line(sweep_dir, monkeypatch, capsys):
    (sweep_dir / "combo.toml").write_text(
        '[fixed]\nepochs = 1\nlayers = "784,32,10"\ntrain-size = 1000\nval-size = 300\n'
        "[search]\ncuda-graph = { choices = [true] }\ndropout = { low = 0.1, high = 0.5 }\n"
    )  # each value alone is fine; a graph cannot replay dropout's masks
    code, _, err = run_main(monkeypatch, capsys, "sweep", "run", "combo.toml", "--study", "s", "--trials", 3)
    assert code == 2 and err.startswith("error: trial 0 (cuda-graph True, dropout 0.") and err.count("\n") == 1
    assert "--cuda-graph cannot capture --dropout" in err
    assert [t.state for t in trials(sweep_dir)] == [TrialState.FAIL]


def test_workers_of_a_killed_command_stop_and_fail_their_trials(sweep_dir):
    space(sweep_dir, epochs=50, train=1500)
    proc = subprocess.Popen(gpumlp("sweep", "run", "space.toml", "--study", "s", "--trials", 4),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    victim = wait_for(lambda: running(sweep_dir))[0]
    proc.kill()  # SIGKILL: the command cannot tell its worker
    proc.wait()
    pid = victim.user_attrs["worker"]["pid"]
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z", 10)
    ts = trials(sweep_dir)
    assert [t.state for t in ts if t.number == victim.number] == [TrialState.FAIL]
    assert not [t for t in ts if t.state == TrialState.RUNNING] and len(finished(ts)) < 4


def test_a_study_keeps_the_heartbeat_it_was_created_with(sweep_dir, monkeypatch, capsys):
    args = ("sweep", "run", "space.toml", "--study", "s", "--trials", 1)
    assert run_main(monkeypatch, capsys, *args, "--heartbeat", 5)[0] == 0
    code, _, err = run_main(monkeypatch, capsys, *args, "--heartbeat", 30)
    assert code == 2 and "beats every 5 s" in err and err.count("\n") == 1
    assert run_main(monkeypatch, capsys, *args)[0] == 0  # without --heartbeat: the study's


def test_a_sqlite_storage_in_a_new_folder_makes_the_folder(sweep_dir, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "sweep", "run", "space.toml", "--study", "s", "--trials", 1,
                            "--storage", "sqlite:///runs/of/today.db")  # fmt: skip
    assert code == 0, err
    assert len(finished(trials(sweep_dir, db=f"sqlite:///{sweep_dir / 'runs' / 'of' / 'today.db'}"))) == 1
