"""Config files of training options (gpumlp/training/configfile.py) and ``gpumlp train --config``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpumlp.cli import commands as cli
from gpumlp.errors import ConfigError
from gpumlp.formats.untrusted import MAX_TOML_BYTES, read_toml
from gpumlp.training import configfile
from gpumlp.training.config import TrainConfig
from gpumlp.training.run import run, train_settings
from standins.entry_point import run_main

TINY = dict(sizes=(784, 24, 10), epochs=1, train_size=1000, val_size=200, test_size=100, batch_size=50, lr=0.5)


def test_a_written_config_reads_back_exactly(tmp_path):
    """Every option, floats that need all 17 digits, and the thread count, read back as they were."""
    options = TrainConfig(**{**TINY, "lr": 0.1 + 0.2}, init="he", optimizer="adam", eps=5e-324).to_dict()
    options.update(preset=None, threads=3, weight_decay=1e-300, momentum=2 / 3)
    path = configfile.write(tmp_path / "run.toml", options, header="found by a sweep\nsecond line")
    text = path.read_text()
    assert text.startswith("# found by a sweep\n# second line\n# gpumlp train's options")
    assert "preset" not in text and "lr = 0.30000000000000004\n" in text and "layers = [784, 24, 10]\n" in text
    del options["preset"]  # None: left out, which means the same
    assert configfile.read(path) == options
    assert [p.name for p in tmp_path.iterdir()] == ["run.toml"], "written atomically: no temporary file left"


def test_strings_are_escaped_as_toml_reads_them(tmp_path):
    odd = 'a "quoted" back\\slash\ttab\nnewline \x7f del \x01 é ✓'
    configfile.write(tmp_path / "s.toml", {"device": odd})
    assert read_toml(tmp_path / "s.toml", "the file", ConfigError)["device"] == odd


def test_a_byte_order_mark_is_skipped(tmp_path):
    """Windows Notepad's UTF-8 starts with one; TOML never needs it."""
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbflr = 0.5\n")
    assert configfile.read(tmp_path / "bom.toml") == {"lr": 0.5}


def test_layers_as_a_string_or_a_list_and_ints_as_floats(tmp_path):
    (tmp_path / "a.toml").write_text('layers = "784, 30 10"\nlr = 1\nthreads = 2\npreset = "fast"\n')
    assert configfile.read(tmp_path / "a.toml") == {"sizes": [784, 30, 10], "lr": 1.0, "threads": 2, "preset": "fast"}
    (tmp_path / "b.toml").write_text("layers = [784, 30, 10]\naugment = 'elastic,affine'\n")
    assert configfile.read(tmp_path / "b.toml") == {"sizes": [784, 30, 10], "augment": "affine,elastic"}


BAD = [
    ("lr = 0.1\nlr = 0.2\n", "is not a valid TOML file: .*line 2"),
    ("batch-size = \n", "is not a valid TOML file: .*line 1"),
    ("bach-size = 32\n", "unknown option 'bach-size'; did you mean 'batch-size'\\?"),
    ("batch_size = 32\n", "unknown option 'batch_size'; did you mean 'batch-size'\\?"),
    ("zzz = 1\n", "unknown option 'zzz'; the keys are gpumlp train's option names"),
    ("[search]\nlr = 0.1\n", "'search' is a table"),
    ("lr = { low = 0.1 }\n", "'lr' is a table"),
    ('lr = "fast"\n', "--lr must be a finite number \\(got 'fast'\\)"),
    ("epochs = 2.5\n", "--epochs must be a whole number"),
    ("epochs = 0\n", "--epochs must be at least 1"),
    ("cuda-graph = 1\n", "--cuda-graph is a flag"),
    ("activation = 3\n", "--activation must be a string in quotes"),
    ("layers = 784\n", "--layers must be a string such as"),
    ("layers = [784, 1.5, 10]\n", "layer sizes must be whole numbers"),
    ('layers = "784,10,3"\n', "--layers must start with 784"),
    ('optimizer = "adamw"\n', "unknown --optimizer 'adamw'"),
    ('preset = "fastest"\n', "unknown --preset 'fastest'"),
    ("threads = 0\n", "--threads must be a whole number from 1"),
    ("batch-size = 100\ntrain-size = 10\n", "--batch-size 100 is larger than --train-size 10"),
    (b"lr = 0.1 # \xff\n", "not UTF-8 text"),
    ("seed = 1" + "0" * 400 + "\n", "--seed must be at most 9,223,372,036,854,775,807 \\(got a whole number of 1329"),
    ("lr = 1" + "0" * 400 + "\n", "--lr must be a finite number \\(got a whole number of 1329 bits\\)"),
    ("epochs = 9223372036854775808\n", "--epochs must be at most 9,223,372,036,854,775,807"),
    ("seed = 1" + "0" * 5000 + "\n", "holds a whole number of more than 4,300 digits; no option takes one"),
    ("lr = 0.1\n".encode("utf-16"), "is UTF-16 text \\(as PowerShell's > writes it\\); save it as UTF-8"),
    (b"lr = 0.1\0\n", "is not a valid TOML file"),
    ('init = "zeros"\n', "unknown --init 'zeros': choose one of normal"),
    ('activation = "gelu"\n', "unknown --activation 'gelu'"),
    ('save = "x.npz"\n', "'save' is given on the command line \\(gpumlp train --save\\), not in the file"),
    ('resume = "x.npz"\n', "'resume' is given on the command line"),
]


@pytest.mark.parametrize("content, message", BAD)
def test_each_error_is_one_line_naming_the_file_exit_2(tmp_path, monkeypatch, capsys, content, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, out, err = run_main(monkeypatch, capsys, "train", "--config", path, "--save", "out.npz")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {path}") and "Traceback" not in err
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"], "nothing written"


def test_an_unreadable_file_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    os.mkfifo(tmp_path / "fifo.toml")  # never waited on
    for path, said in (
        (tmp_path / "absent.toml", f"cannot read the config file {tmp_path / 'absent.toml'}: no such file"),
        (tmp_path, f"{tmp_path} is a directory, not a regular file"),
        (tmp_path / "fifo.toml", f"{tmp_path / 'fifo.toml'} is a FIFO (named pipe), not a regular file"),
        ("/dev/zero", "/dev/zero is a device, not a regular file"),  # never read to the end of memory
    ):
        code, out, err = run_main(monkeypatch, capsys, "train", "--config", path)
        assert (code, out) == (2, "") and err.count("\n") == 1, err
        assert err.startswith(f"error: {said}"), err
    (tmp_path / "huge.toml").write_bytes(b"# " + b"x" * MAX_TOML_BYTES + b"\n")
    code, out, err = run_main(monkeypatch, capsys, "train", "--config", tmp_path / "huge.toml")
    assert code == 2 and "more than the config file holds (1,048,576)" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.toml", "huge.toml"]


def test_write_refuses_what_it_cannot_write(tmp_path):
    with pytest.raises(ConfigError, match="'colour'.*not a gpumlp train option"):
        configfile.write(tmp_path / "a.toml", {"colour": "red"})
    with pytest.raises(ConfigError, match=r"cannot write sizes = \[784, 'x', 10\] to a config file"):
        configfile.write(tmp_path / "a.toml", {"sizes": [784, "x", 10]})
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot write the config file in"):
        configfile.write(tmp_path / "file" / "a.toml", {"lr": 0.1})
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def _defaults() -> dict:
    options = TrainConfig().to_dict()  # every option, as the command line holds them
    del options["preset"]
    return options


def test_command_line_wins_over_the_file_which_wins_over_the_preset(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "fast"\nlr = 0.5\nepochs = 2\nthreads = 3\n')
    cfg, threads, origin = train_settings(_defaults(), {"epochs": 1}, config=path)
    assert (cfg.preset, cfg.lr, cfg.epochs, threads, origin) == ("fast", 0.5, 1, 3, f"threads in {path}")
    assert (cfg.sizes, cfg.batch_size, cfg.optimizer, cfg.momentum) == ((784, 512, 10), 128, "nesterov", 0.95)
    cfg, threads, origin = train_settings(_defaults(), {}, preset="seed", config=path, threads=2)  # --preset seed
    assert (cfg.preset, cfg.sizes, cfg.batch_size, cfg.lr, cfg.epochs, threads, origin) == (
        "seed",
        (784, 16, 16, 10),
        10,
        0.5,
        2,
        2,
        "--threads",
    )
    path.write_text("lr = 0.5\n")  # no preset: the defaults under the file
    cfg, threads, _ = train_settings(_defaults(), {"batch_size": 7}, config=path)
    assert (cfg.lr, cfg.batch_size, cfg.sizes, cfg.preset, threads) == (0.5, 7, (784, 16, 16, 10), None, None)


def test_a_written_config_reproduces_its_run_bit_for_bit(tmp_path, monkeypatch, capsys, mnist_dir):
    """Train, write the run's options and thread count, train again from the file through the real
    entry point: the same weights, bit for bit."""
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(**{**TINY, "sizes": (784, 64, 10)}, optimizer="nesterov", seed=5)
    first = run(cfg, data_dir=mnist_dir, save=tmp_path / "first.npz", log=lambda s: None, threads=2)
    configfile.write(tmp_path / "run.toml", {**cfg.to_dict(), "threads": 2})
    code, out, err = run_main(
        monkeypatch, capsys, "train", "--config", "run.toml", "--data-dir", mnist_dir, "--save", "again.npz", "-q"
    )
    assert code == 0, err
    assert "2 BLAS threads" in out and "nesterov lr 0.5" in out
    with np.load(first.checkpoint) as a, np.load(tmp_path / "again.npz") as b:
        arrays = [k for k in a.files if k[0] in "Wb"]
        assert arrays and arrays == [k for k in b.files if k[0] in "Wb"]
        for k in arrays:
            assert np.array_equal(a[k], b[k]), k


def test_train_config_through_typer_and_resume_with_the_same_file(tmp_path, monkeypatch, mnist_dir):
    """``--config`` with options beside it (they win), then the same command plus ``--resume``: the
    file's options count as given, and a resumed run keeps its fixed ones."""
    monkeypatch.chdir(tmp_path)
    configfile.write(tmp_path / "run.toml", {**TINY, "epochs": 1, "threads": 1})
    args = ["train", "--config", "run.toml", "--data-dir", str(mnist_dir), "--save", "ck.npz", "--quiet"]
    out = CliRunner().invoke(cli.app, [*args, "--lr", "0.25"])
    assert out.exit_code == 0, out.output
    assert "MLP(784-24-10" in out.output and "lr 0.25" in out.output and "1 BLAS thread" in out.output
    out = CliRunner().invoke(cli.app, [*args, "--resume", "ck.npz", "--epochs", "2"])
    assert out.exit_code == 0, out.output
    assert "from epoch 1 of ck.npz" in out.output and "lr 0.5" in out.output
    (tmp_path / "other.toml").write_text("layers = [784, 30, 10]\n")
    out = CliRunner().invoke(cli.app, ["train", "--config", "other.toml", "--resume", "ck.npz", "--epochs", "3"])
    assert out.exit_code == 2 and "--layers 784,30,10 contradicts the checkpoint ([784, 24, 10])" in out.output


def test_the_documented_example_file_reads_and_ships():
    """docs/cli.md's example is docs/run.toml, byte for byte, so README's `gpumlp train --config
    docs/run.toml` runs in a fresh clone."""
    docs = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    shipped = Path(__file__).parents[1] / "docs" / "run.toml"
    assert shipped.read_text() == re.search(r"```toml\n(.*?)```", docs, re.S).group(1)
    assert configfile.read(shipped) == {
        "preset": "fast", "sizes": [784, 256, 10], "lr": 0.1, "batch_size": 64, "epochs": 3, "threads": 2
    }  # fmt: skip


def test_the_start_line_says_where_the_thread_count_came_from(tmp_path, monkeypatch, mnist_dir):
    """A config file's ``threads`` is named as the file's, not as ``--threads``; typed, the option
    wins and is named; either wins over GPUMLP_THREADS."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPUMLP_THREADS", "2")
    configfile.write(tmp_path / "run.toml", {**TINY, "val_size": 0, "test_size": 0, "threads": 1})
    args = ["train", "--config", "run.toml", "--data-dir", str(mnist_dir), "--save", "ck.npz", "--quiet"]

    def start_line(*more: str) -> str:
        out = CliRunner().invoke(cli.app, [*args, *more])
        assert out.exit_code == 0, out.output
        return next(line for line in out.output.splitlines() if line.startswith("training "))

    assert start_line().endswith(", 1 BLAS thread (threads in run.toml)")
    assert start_line("--threads", "3").endswith(", 3 BLAS threads (--threads)")
