"""What gpumlp tells about itself: --version, flags shown as flags, value completion, bad values
said as gpumlp says every error, help texts, and ``dir(gpumlp)``."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpumlp import activations, losses, optim
from gpumlp.cli import commands as cli
from gpumlp.cli.app import completion
from gpumlp.data import datasets
from gpumlp.training.presets import PRESETS

runner = CliRunner()
GPUMLP = str(Path(sys.executable).parent / "gpumlp")


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_installed_packages_version(flag):
    out = subprocess.run([GPUMLP, flag], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"gpumlp {version('gpumlp')}\n" and out.stderr == ""


@pytest.mark.parametrize("command", [[], ["train"], ["predict"], ["test"], ["bench"]])
def test_help_shows_flags_without_a_value_type(command):
    result = runner.invoke(cli.app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    flag_rows = [line for line in result.output.splitlines() if "--help" in line]
    assert flag_rows and all("<" not in line for line in flag_rows)
    assert "<str>" in result.output or "<int" in result.output or not command  # options with values keep theirs
    if command == ["train"]:
        (quiet,) = [line for line in result.output.splitlines() if "--quiet" in line]
        assert quiet.split("--quiet")[1].split()[0] == "-q" and "No progress bar" in quiet


def complete(words: str) -> list[str]:
    """What bash completion offers for the last of ``words`` (``""`` after a trailing space),
    asked as the shell script ``gpumlp --install-completion`` installs asks it."""
    env = {**os.environ, "_GPUMLP_COMPLETE": "complete_bash", "COMP_WORDS": f"gpumlp {words}"}
    env["COMP_CWORD"] = str(len(f"gpumlp {words}".split(" ")) - 1)
    out = subprocess.run([GPUMLP], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_shell_completion_offers_each_choice_from_its_record():
    assert complete("train --optimizer ") == list(optim.RULES)
    assert complete("train --optimizer n") == ["nesterov"]
    assert complete("train --activation ") == list(activations.ACTIVATIONS)
    assert complete("train --loss ") == list(losses.LOSSES)
    assert complete("train --preset f") == ["fast"]
    assert complete("train --augment affine,e") == ["affine,elastic"]
    assert complete("test --dataset ") == list(datasets.DATASETS)
    assert complete("predict --device c") == ["cpu", "cuda"]
    assert complete("train --log-format ") == ["text", "json"]


def test_every_choice_option_of_train_completes():
    from gpumlp.training.config import TrainConfig

    completed = {f.name for f in TrainConfig.__dataclass_fields__.values() if "choices" in f.metadata}
    assert completed == {"activation", "loss", "init", "dataset", "dtype", "device", "optimizer", "schedule",
                         "monitor", "augment", "preset"}  # fmt: skip
    assert set(PRESETS) == set(TrainConfig.__dataclass_fields__["preset"].metadata["choices"]())


def test_a_comma_list_completes_its_last_item_once_each():
    kinds = completion(lambda: ("none", "shift", "affine", "elastic"), listed=True)
    assert kinds("") == ["none", "shift", "affine", "elastic"]
    assert kinds("affine,") == ["affine,shift", "affine,elastic"]  # affine once; none stands alone
    assert kinds("shift,affine,e") == ["shift,affine,elastic"]
    assert kinds("none,") == []
    assert completion(lambda: optim.SCHEDULES)("c") == ["constant", "cosine"]


def test_a_rule_registered_later_is_completed(monkeypatch):
    """Completion reads the records when asked, so an update rule registered after import is offered."""
    from gpumlp.training.config import DECLARED

    monkeypatch.setitem(optim.RULES, "lion", optim.RULES["sgd"])
    assert "lion" in completion(DECLARED["optimizer"].metadata["choices"])("l")


def test_test_help_names_every_checkpoint_format_it_reads():
    result = runner.invoke(cli.app, ["test", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert "Rust-project or Nielsen" in result.output and "written by gpumlp train" not in result.output


def test_dir_lists_the_api_not_its_helpers():
    import gpumlp

    public = [n for n in dir(gpumlp) if not n.startswith("__")]
    assert public == sorted(gpumlp.__all__) and "fit" in public and "__version__" in dir(gpumlp)
