"""gpumlp sweep's space file, storage URL and worker layout: every error one line, exit 2, before any trial."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("optuna")

from gpumlp.errors import SweepError  # noqa: E402
from gpumlp.sweep.run import worker_devices, worker_threads  # noqa: E402
from gpumlp.sweep.space import check_space, read_space  # noqa: E402
from gpumlp.sweep.study import storage_url  # noqa: E402
from standins.entry_point import run_main  # noqa: E402

GOOD = """
[fixed]
epochs = 2
layers = [784, 32, 10]
optimizer = "momentum"
[search]
lr = { low = 0.01, high = 1.0, log = true }
batch-size = { choices = [32, 64] }
momentum = { low = 0.0, high = 0.9 }
"""


def test_a_good_space_is_normalised_and_fingerprinted(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(GOOD)
    space = read_space(path)
    assert space.fixed == {"epochs": 2, "layers": "784,32,10", "optimizer": "momentum"}
    assert space.search["lr"].kind == "float" and space.search["lr"].log
    assert space.search["batch-size"].choices == (32, 64)
    assert check_space(space.as_dict()).fingerprint() == space.fingerprint()  # what a worker rebuilds
    other = check_space({**space.as_dict(), "fixed": {**space.fixed, "epochs": 3}})
    assert other.fingerprint() != space.fingerprint()


@pytest.mark.parametrize(
    "text,expected",
    [
        ('[search]\nmomentom = { low = 0.1, high = 0.9 }', "has this name (did you mean momentum?)"),
        ('[fixed]\nepochs = 2\n[serch]\nlr = { low = 0.1, high = 1.0 }', "did you mean [search]"),
        ("[search]\nlr = { low = 1.0, high = 0.1 }", "low (1.0) must be below high (0.1)"),
        ("[search]\nlr = { low = 0.0, high = 1.0, log = true }", "a log range needs low above 0"),
        ("[search]\nlr = { low = -1.0, high = 1.0 }", "--lr must be a positive finite number"),
        ("[search]\nepochs = { low = 1.5, high = 3 }", "low must be a whole number"),
        ("[search]\nlr = { low = 0.1, hi = 1.0 }", "unknown key 'hi'"),
        ("[search]\nbatch-size = { choices = [32, 0] }", "--batch-size must be at least 1"),
        ('[search]\nactivation = { choices = ["relu", "swish"] }', "activation"),
        ("[search]\nlayers = { low = 1, high = 3 }", "layers is not a number"),
        ("[fixed]\nlr = 0.1\n[search]\nlr = { low = 0.1, high = 1.0 }", "lr is both fixed and searched"),
        ('[fixed]\noptimizer = "sgd"\n[search]\nmomentum = { low = 0.0, high = 0.9 }', "--optimizer sgd ignores it"),
        ('[search]\noptimizer = { choices = ["nesterov", "adam"] }\nmomentum = { low = 0.0, high = 0.9 }',
         "--optimizer adam ignores it"),
        ('[fixed]\npreset = "fast"\n[search]\nlr = { low = 0.1, high = 1.0 }', "not an option a sweep takes"),
        ('[fixed]\ndevice = "cuda"\n[search]\nlr = { low = 0.1, high = 1.0 }', "gpumlp sweep run --device"),
        ("[fixed]\ntest-size = 100\n[search]\nlr = { low = 0.1, high = 1.0 }", "never reads the test images"),
        ("[search]\nval-size = { choices = [100, 200] }", "put it in [fixed]"),
        ("[fixed]\nval-size = 0\n[search]\nlr = { low = 0.1, high = 1.0 }", "give 1 or more"),
        ("[fixed]\nepochs = 2", "[search] names no option"),
        ("[search]\nlr = { choices = [] }", "choices must be a non-empty list"),
        ("[search]\nepochs = { low = 1, high = 5, step = 3 }", "step 3 does not divide high - low (4)"),
        ("[search]\nseed = { low = 0, high = 9007199254740993 }", "within ±9,007,199,254,740,992 (2**53)"),
        ("[search]\nlr = { low = 0.1, high = 1.0, step = 0.4 }", "make high 0.9 or 1.3"),
        ('[search]\nlayers = { choices = [[784, 10], "784,10"] }', "choices name '784,10' twice"),
        ("[fixed]\nlayers = { a = 1 }\n[search]\nlr = { low = 0.1, high = 1.0 }", "[fixed] layers is a table"),
        ("[search]\nlr = [", "is not a valid TOML file"),
        (b"[search] # \xff", "is not a TOML file: it is not UTF-8 text"),
    ],
)  # fmt: skip
def test_each_error_in_a_space_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, text, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.toml").write_bytes(text if isinstance(text, bytes) else text.encode())
    code, out, err = run_main(monkeypatch, capsys, "sweep", "run", "space.toml", "--study", "s", "--trials", "2")
    assert code == 2, err
    assert err.startswith("error: space.toml") and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "sweeps").exists()  # nothing created before the space is right


def test_a_step_that_divides_the_range_is_kept_exactly():
    space = check_space({"search": {"lr": {"low": 0.1, "high": 1.0, "step": 0.3}, "epochs": {"low": 1, "high": 7,
                                                                                            "step": 3}}})  # fmt: skip
    assert (space.search["lr"].step, space.search["epochs"].step) == (0.3, 3)


def test_the_suggestion_names_the_close_option():
    with pytest.raises(SweepError, match=r"\[search\] batch_size: .*did you mean batch-size\?"):
        check_space({"search": {"batch_size": {"choices": [32]}}})


def test_a_missing_space_file_and_a_bad_study_name_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "sweep", "run", "nothing.toml", "--study", "s")
    assert code == 2 and err.startswith("error: cannot read the space file nothing.toml") and err.count("\n") == 1
    (tmp_path / "space.toml").write_text(GOOD)
    code, _, err = run_main(monkeypatch, capsys, "sweep", "run", "space.toml", "--study", "../x")
    assert code == 2 and "--study '../x'" in err and err.count("\n") == 1


def test_an_unreachable_database_is_one_line(tmp_path, monkeypatch, capsys, refused_url):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.toml").write_text(GOOD)
    port = refused_url.rstrip("/").rsplit(":", 1)[1]
    url = f"postgresql://gpumlp:secret@127.0.0.1:{port}/db"
    code, _, err = run_main(monkeypatch, capsys, "sweep", "run", "space.toml", "--study", "s", "--storage", url)
    assert code == 2 and err.startswith("error: cannot open the study storage postgresql+psycopg://gpumlp:***@")
    assert err.count("\n") == 1 and "secret" not in err


def test_without_optuna_the_command_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    code, _, err = run_main(monkeypatch, capsys, "sweep", "show", "s")
    assert code == 2 and "pip install 'gpumlp[sweep]'" in err and err.count("\n") == 1


def test_storage_urls():
    assert storage_url("postgresql://u@h/db", "s") == "postgresql+psycopg://u@h/db"
    assert storage_url("postgres://u@h/db", "s") == "postgresql+psycopg://u@h/db"
    assert storage_url("postgresql+psycopg://u@h/db", "s") == "postgresql+psycopg://u@h/db"
    assert storage_url("sqlite:///x.db", "s") == "sqlite:///x.db"
    with pytest.raises(SweepError, match="not a database URL"):
        storage_url("x.db", "s")


def test_workers_share_the_cores_and_spread_over_the_gpus():
    assert worker_devices("cuda", 4, 2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_devices("cuda", 3, 1) == ["cuda", "cuda", "cuda"]
    assert worker_devices("cuda:1", 2, 4) == ["cuda:1", "cuda:1"]
    assert worker_devices("cpu", 2, 4) == ["cpu", "cpu"]
    assert [worker_threads(j, cores=16) for j in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]


def test_shell_completion_offers_the_pruners_and_what_to_keep():
    import os
    import subprocess
    from pathlib import Path

    def complete(words: str) -> list[str]:  # as bash asks it (tests/test_cli_help.py asks the same way)
        env = {**os.environ, "_GPUMLP_COMPLETE": "complete_bash", "COMP_WORDS": f"gpumlp {words}",
               "COMP_CWORD": str(len(f"gpumlp {words}".split(" ")) - 1)}  # fmt: skip
        out = subprocess.run([str(Path(sys.executable).parent / "gpumlp")], env=env, capture_output=True, text=True)
        return out.stdout.split()

    assert complete("sweep run s.toml --pruner ") == ["median", "halving", "none"]
    assert complete("sweep run s.toml --keep b") == ["best"]
    assert complete("sweep ") == ["run", "show", "best"]


def test_the_shipped_space_files_read():
    from pathlib import Path

    shipped = sorted((Path(__file__).parents[1] / "docs" / "spaces").glob("*.toml"))
    assert shipped
    for path in shipped:
        assert read_space(path).search, path


def test_the_documented_space_file_reads(tmp_path):
    import re
    from pathlib import Path

    docs = (Path(__file__).parents[1] / "docs" / "sweeps.md").read_text()
    (tmp_path / "space.toml").write_text(re.search(r"```toml\n(.*?)```", docs, re.S).group(1))
    space = read_space(tmp_path / "space.toml")
    assert set(space.search) == {"lr", "batch-size", "momentum", "optimizer"}
    assert space.fixed["layers"] == "784,512,10"


@pytest.mark.parametrize(
    "make, storage, expected",
    [
        (lambda d: (d / "notes.db").write_text("hello"), "sqlite:///notes.db", "file is not a database"),
        (lambda d: (d / "dir.db").mkdir(), "sqlite:///dir.db", "dir.db is a folder"),
        (lambda d: None, "sqlite:////dev/null", "/dev/null is not a regular file"),
        (lambda d: None, "postgresql://u:secret@h:port/db", "postgresql://u:***@h:port/db is not a database URL"),
    ],
)  # fmt: skip
def test_a_storage_that_is_no_database_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys, make, storage,
                                                                      expected):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.toml").write_text(GOOD)
    make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (("run", "space.toml", "--study", "s"), ("show", "s"), ("best", "s", "--out", "b.toml")):
        code, out, err = run_main(monkeypatch, capsys, "sweep", *args, "--storage", storage)
        assert (code, out) == (2, "") and err.count("\n") == 1 and expected in err, err
        assert "secret" not in err and "Traceback" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == before, "no lock file, no database, no output"


def test_show_and_best_never_make_a_database(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for args in (("show", "s"), ("best", "s", "--out", "b.toml")):
        code, _, err = run_main(monkeypatch, capsys, "sweep", *args, "--storage", "sqlite:///runs/s.db")
        assert code == 2 and "runs/s.db does not exist" in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def _study(folder, name: str = "s", by_gpumlp: bool = True):
    """A study in ``folder/sweeps/NAME.db`` with one complete trial, as gpumlp sweep run leaves one,
    made without training anything (or, ``by_gpumlp`` False, a plain Optuna study)."""
    import optuna

    from gpumlp.sweep import study as studies

    (folder / "sweeps").mkdir(exist_ok=True)
    storage = studies.open_storage(f"sqlite:///{folder / 'sweeps' / f'{name}.db'}")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    if by_gpumlp:
        space = check_space({"fixed": {"epochs": 2}, "search": {"lr": {"low": 0.01, "high": 1.0}}})
        study.set_user_attr(studies.SPACE_ATTR, space.as_dict())
        study.set_user_attr(studies.FINGERPRINT_ATTR, space.fingerprint())
    dist = {"lr": optuna.distributions.FloatDistribution(0.01, 1.0)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.5}, distributions=dist, value=0.9))
    return study


def test_best_never_writes_over_the_study_or_a_file_that_is_not_a_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _study(tmp_path)
    (tmp_path / "net.npz").write_bytes(b"PK\x03\x04 a network")
    keep = {p: p.read_bytes() for p in (tmp_path / "sweeps" / "s.db.lock", tmp_path / "net.npz")}
    for out, said in (
        ("sweeps/s.db", "--out sweeps/s.db is the study's database"),
        ("sweeps/s.db.lock", "--out sweeps/s.db.lock is the study's file .lock"),
        ("sweeps/s.db-wal", "--out sweeps/s.db-wal is the study's file -wal"),
        ("net.npz", "net.npz exists and is not a TOML config file"),
    ):
        code, out_, err = run_main(monkeypatch, capsys, "sweep", "best", "s", "--out", out)
        assert (code, out_) == (2, "") and err.startswith(f"error: {said}") and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in keep} == keep, "nothing replaced"
    assert (tmp_path / "sweeps" / "s.db").read_bytes().startswith(b"SQLite format 3\0")
    code, out_, err = run_main(monkeypatch, capsys, "sweep", "best", "s", "--out", "best.toml")
    assert code == 0 and "lr = 0.5\n" in (tmp_path / "best.toml").read_text(), err
    assert run_main(monkeypatch, capsys, "sweep", "best", "s", "--out", "best.toml")[0] == 0  # its own: replaced


def test_best_of_a_study_gpumlp_did_not_make_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _study(tmp_path, "plain", by_gpumlp=False)
    code, out, err = run_main(monkeypatch, capsys, "sweep", "best", "plain", "--out", "b.toml")
    assert (code, out) == (2, "") and "study 'plain' was not made by gpumlp sweep run" in err and err.count("\n") == 1
    assert not (tmp_path / "b.toml").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--jobs", 100_000), "--jobs 100000 is more than 4 workers for each of the"),
        (("--jobs", 0), "--jobs must be at least 1 (got 0)"),
        (("--jobs", 10**400), "--jobs a whole number of 1329 bits is more than"),
        (("--trials", 10**400), "--trials must be at most 9,223,372,036,854,775,807 (got a whole number of 1329 bits)"),
        (("--heartbeat", 10**6), "--heartbeat must be at most 86,400 (got 1000000)"),
        (("--trials", 0), "--trials must be at least 1 (got 0)"),
        (("--heartbeat", -1), "--heartbeat must be at least 1 (got -1)"),
        (("--keep", "some"), "unknown --keep 'some'"),
    ],
)
def test_a_count_that_cannot_work_is_refused_before_anything_is_made(tmp_path, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.toml").write_text(GOOD)
    code, out, err = run_main(monkeypatch, capsys, "sweep", "run", "space.toml", "--study", "s", *args)
    assert (code, out) == (2, "") and err.startswith(f"error: {expected}") and err.count("\n") == 1, err
    assert [p.name for p in tmp_path.iterdir()] == ["space.toml"], "no sweeps/ folder, no worker started"
