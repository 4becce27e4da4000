"""scripts/reproduce.py, run for real in --smoke mode: its tables, its JSON and its option errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpumlp.training.presets import PRESETS

RUNS = ["default", *PRESETS]  # scripts/reproduce.py runs plain `gpumlp train` first

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce.py"
RUST_HEAD = "| layers | train imgs | epochs | acc (500) | acc (first 500) | Rust acc |"
PRESET_HEAD = "| preset | network | seeds | test acc. mean | test acc. min–max | epochs |"


def reproduce(args: list[str], mnist_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPUMLP_DATA_DIR": str(mnist_dir), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)


def table_rows(markdown: str, head: str) -> list[list[str]]:
    """The body rows, as lists of cells, of the markdown table whose header starts with ``head``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    assert set(lines[start + 1].replace("|", "").split()) == {"---"}
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def percent(cell: str) -> float:
    value = float(cell.rstrip("%"))
    assert 0 < value <= 100, cell
    return value


@pytest.fixture(scope="module")
def smoke(mnist_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce")
    out = reproduce(
        [
            "--smoke",
            "--seeds",
            "0,1",
            "--seeds-for",
            "best=0",
            "--json",
            str(tmp / "r.json"),
            "--out",
            str(tmp / "r.md"),
        ],
        mnist_dir,
        tmp,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out, json.loads((tmp / "r.json").read_text()), (tmp / "r.md").read_text()


def test_smoke_run_prints_both_tables(smoke):
    out, _, written = smoke
    assert out.stdout.strip() == written.strip()  # --out holds exactly the markdown of stdout
    assert out.stdout.count("SMOKE RUN: not results") >= 2  # at the top and at the bottom
    rust = table_rows(out.stdout, RUST_HEAD)
    assert [r[0] for r in rust] == ["784,16,16,10", "784,16,16,10", "784,10", "784,100,50,10", "784,300,100,50,10"]
    for row in rust:
        percent(row[3]), percent(row[4]), percent(row[5])  # this run's two accuracies, and the Rust table's
    presets = table_rows(out.stdout, PRESET_HEAD)
    assert [r[0] for r in presets] == RUNS
    for row in presets:
        mean = percent(row[3])
        low, high = (percent(x) for x in row[4].rstrip("%").split("–"))
        assert low <= mean <= high
        assert row[2] == ("0" if row[0] == "best" else "0,1") and row[5] == "1"  # the seeds, one epoch each
    assert "Machine: " in out.stdout and "numpy" in out.stdout
    assert "Command: `" in out.stdout and "reproduce.py --smoke --seeds 0,1" in out.stdout
    assert "preset fast, seed 1: " in out.stderr  # progress goes to stderr, not into the table


def test_smoke_json_has_every_run(smoke):
    _, result, _ = smoke
    assert result["smoke"] is True and result["label"] == "SMOKE RUN: not results"
    assert result["seeds"] == [0, 1] and result["machine"]["numpy"] and result["command"] and result["date"]
    assert len(result["rust_rows"]["rows"]) == 5
    assert list(result["presets"]) == RUNS
    for name, preset in result["presets"].items():
        runs = preset["runs"]
        assert [r["seed"] for r in runs] == ([0] if name == "best" else [0, 1])  # --seeds-for best=0
        for r in runs:
            assert (r["config"]["preset"] or "default") == name and r["config"]["seed"] == r["seed"]
            assert 0 < r["test_accuracy"] <= 1 and r["epochs_run"] == len(r["history"]) == 1
            assert r["history"][0]["epoch"] == 1 and r["history"][0]["images_per_s"] > 0
            assert 0 < r["train_seconds"] <= r["wall_seconds"] and r["checkpoint"] is None
        for key in ("test_accuracy", "train_seconds", "wall_seconds", "images_per_s"):
            s = preset["summary"][key]
            assert s["min"] <= s["mean"] <= s["max"]
        assert preset["summary"]["test_accuracy"]["mean"] == pytest.approx(
            sum(r["test_accuracy"] for r in runs) / len(runs)
        )
    assert result["presets"]["best"]["runs"][0]["config"]["sizes"] == [784, 32, 10]  # --smoke shrinks the network


def test_unknown_preset_is_a_one_line_usage_error(mnist_dir, tmp_path):
    out = reproduce(["--presets", "nope"], mnist_dir, tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    error = out.stderr.strip().splitlines()[-1]
    assert "error:" in error and "'nope'" in error
    assert all(name in error for name in RUNS)
