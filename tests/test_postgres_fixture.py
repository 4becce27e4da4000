"""The real PostgreSQL server the sweep tests share (tests/standins/postgres.py): it answers, Optuna's
RDB storage on it serves two worker processes one study, and stopping it leaves nothing behind."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from standins.postgres import find_bindir, postgres_server, process_alive

WORKER = """
import os, sys, time
import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
url, name, k = sys.argv[1], sys.argv[2], int(sys.argv[3])

def objective(trial):
    trial.set_user_attr("pid", os.getpid())
    time.sleep(0.02)  # long enough for the two workers' trials to interleave
    return trial.suggest_float("x", -1.0, 1.0) ** 2

optuna.load_study(study_name=name, storage=url).optimize(objective, n_trials=k)
"""


def test_the_server_answers(postgres_url):
    psycopg = pytest.importorskip("psycopg")
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        version = conn.execute("select version()").fetchone()[0]
        dbname = conn.execute("select current_database()").fetchone()[0]
    assert version.startswith("PostgreSQL ")
    assert dbname == "gpumlp"


def test_two_worker_processes_share_one_optuna_study(postgres_db_url):
    optuna = pytest.importorskip("optuna")
    k = 8
    optuna.create_study(study_name="shared", storage=postgres_db_url)
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, postgres_db_url, "shared", str(k)], stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in workers:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()

    trials = optuna.load_study(study_name="shared", storage=postgres_db_url).get_trials(deepcopy=False)
    assert len(trials) == 2 * k
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(2 * k))
    assert {t.user_attrs["pid"] for t in trials} == {proc.pid for proc in workers}


def test_stop_leaves_no_server_and_no_folder():
    with postgres_server() as srv:
        pid, root = srv.pid(), srv.root
        assert process_alive(pid)
        assert (root / "data" / "PG_VERSION").exists()
    assert not process_alive(pid)
    assert not root.exists()


def test_a_failing_block_still_stops_the_server():
    with pytest.raises(KeyError, match="boom"), postgres_server() as srv:
        pid, root = srv.pid(), srv.root
        raise KeyError("boom")
    assert not process_alive(pid)
    assert not root.exists()


def test_missing_binaries_name_the_one_missing(tmp_path):
    (tmp_path / "initdb").write_text("#!/bin/sh\n")
    (tmp_path / "initdb").chmod(0o755)
    why = f"PostgreSQL's server binaries are not installed: pg_ctl not in {tmp_path}"
    assert find_bindir([tmp_path]) == (None, why)
    (tmp_path / "pg_ctl").write_text("#!/bin/sh\n")
    (tmp_path / "pg_ctl").chmod(0o755)
    assert find_bindir([tmp_path]) == (tmp_path, None)


def test_without_binaries_the_server_skips_with_the_reason(tmp_path):
    with pytest.raises(pytest.skip.Exception, match=f"initdb, pg_ctl not in {tmp_path}"), postgres_server([tmp_path]):
        pass


def test_the_server_runs_as_postgres_under_root_else_as_the_user(postgres):
    status = Path(f"/proc/{postgres.pid()}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid == (pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid())


def test_a_port_taken_before_the_server_binds_it_is_replaced(monkeypatch):
    from standins import postgres

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(postgres, "free_port", lambda real=postgres.free_port: next(ports, None) or real())
        with postgres_server() as srv:
            assert srv.port != taken and process_alive(srv.pid())
            assert "could not bind" in srv.log.read_text()
