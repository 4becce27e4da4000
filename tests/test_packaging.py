"""The package as users get it: a wheel built from the checkout, installed in a fresh virtual
environment and run from there. An editable install (how the tests run) finds every module in the
checkout, so a subpackage or data file missing from the packaging list shows only here."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("gpumlp-*.whl")
    return path


def test_the_wheel_holds_every_module_and_the_page(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gpumlp").rglob("*.py")}
    expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "gpumlp").rglob("*.html")}
    assert expected, "no modules found"
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"


@pytest.mark.slow
def test_the_installed_wheel_runs_help_and_a_one_epoch_train(wheel, tmp_path, mnist_dir):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import gpumlp; print(gpumlp.__file__)"],
        cwd=tmp_path, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(env_dir), "gpumlp came from the checkout, not the wheel"
    gpumlp = str(bin_dir / "gpumlp")
    help_ = subprocess.run([gpumlp, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "train" in help_.stdout, help_.stderr
    small = ["--layers", "784,32,10", "--train-size", "2000", "--val-size", "500", "--test-size", "500"]
    train = subprocess.run(
        [gpumlp, "train", *small, "--epochs", "1", "--data-dir", str(mnist_dir), "--save", "run.npz", "-q"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert (tmp_path / "run.npz").is_file()
    assert "test accuracy" in train.stdout
