"""scripts/gpu_check.py, the one command for a GPU machine, rehearsed without one: its plan and
budget, its time limits (real processes killed), results kept as each step ends, JSON read from
the steps' own files, and a small run on the CPU end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPTS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_default_run_fits_about_300_seconds_and_full_adds_the_suite_last(tmp_path):
    gc = load_check()
    steps = gc.plan(sys.executable, "data/mnist", "cuda", tmp_path)
    names = [s.name for s in steps]
    assert names[:3] == ["devices", "probe", "pytest-gpu"]  # the most telling first
    assert names.index("train-seed") < names.index("large-batch-784-800-10") < names.index("bench-cuda")
    assert "pytest-all-devices" not in names
    assert 250 <= sum(s.budget for s in steps) <= 310
    full = gc.plan(sys.executable, "data/mnist", "cuda", tmp_path, full=True)
    assert full[-1].name == "pytest-all-devices" and full[:-1] == steps
    without_torch = [s.name for s in gc.plan(sys.executable, "data/mnist", "cuda", tmp_path, torch=False)]
    assert "bench-torch-cuda" not in without_torch
    cpu = gc.plan(sys.executable, "data/mnist", "cpu", tmp_path)
    assert [s.name for s in cpu] == names  # the rehearsal runs every step, small
    assert all("--device cuda" not in " ".join(s.argv) and "nvidia-smi" not in s.argv for s in cpu)
    assert all(s.json_out is not None and str(s.json_out) in s.argv for s in steps if s.key)  # JSON to its file


def test_plan_prints_each_budget_and_command_and_runs_nothing(tmp_path, capsys):
    gc = load_check()
    out = tmp_path / "out"
    assert gc.main(["--plan", "--out", str(out), "--data-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    lines = text.splitlines()
    assert lines[0].startswith("devices ") and " s " in lines[0]
    total = next(line for line in lines if line.startswith("total"))
    budgets = [float(line.split()[1]) for line in lines[: lines.index(total)]]
    assert float(total.split()[1]) == sum(budgets)
    assert "bench.py --no-extras --device cuda" in text and "<probe>" in text
    gc.main(["--plan", "--only", "bench-cuda", "--data-dir", str(tmp_path)])
    chosen = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert chosen[:4] == ["devices", "probe", "bench-cuda", "bench-cuda-graph"]  # --only matches starts


def test_a_step_past_its_limit_is_killed_with_its_children():
    gc = load_check()
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    code += "print('started', flush=True); time.sleep(60)"
    t0 = time.monotonic()
    stdout, stderr, rc = gc.run_limited([sys.executable, "-c", code], None, timeout=2)
    assert rc == "timeout" and "started" in stdout and "timed out after 2 s" in stderr
    assert time.monotonic() - t0 < 20  # the grandchild holding the pipes died too, or communicate would wait


def test_results_are_saved_as_each_step_ends_and_json_comes_from_the_steps_file(tmp_path):
    gc = load_check()
    check = gc.Check(tmp_path, 60, None)
    check.gpu = True
    result = tmp_path / "r.json"
    noisy = (
        "import json, sys; print('{ not the result'); "
        f"open({str(result)!r}, 'w').write(json.dumps({{'rows': [1]}})); "
        "print('} {', file=sys.stderr)"
    )
    gc.BUDGET["demo"] = 10
    check.run(gc.Step("demo", [sys.executable, "-c", noisy], json_out=result, key="demo_result"))
    saved = json.loads((tmp_path / "gpu-check.json").read_text())  # written before the next step starts
    assert saved["steps"]["demo"]["status"] == "pass" and saved["demo_result"] == {"rows": [1]}
    assert "not the result" in (tmp_path / "gpu-check.log").read_text()
    check.run(gc.Step("demo", [sys.executable, "-c", "raise SystemExit(3)"], json_out=tmp_path / "none", key="x"))
    saved = json.loads((tmp_path / "gpu-check.json").read_text())
    assert saved["steps"]["demo"]["returncode"] == 3 and saved["x"] is None


def test_graph_fallback_and_accuracy_are_found_anywhere_in_the_output():
    gc = load_check()
    long = "--cuda-graph: capturing the training step failed (x); training without a graph\n" + "epoch …\n" * 2000
    assert gc.graph_fell_back(long) and len(long) > 3000
    assert not gc.graph_fell_back("epoch 1/1 loss 0.1\n" * 10)
    assert gc.test_accuracy("test accuracy 95.12% (10000 images)\nsaved x.npz\n") == 95.12
    assert gc.test_accuracy("no accuracy here") is None


def test_a_small_run_on_the_cpu_end_to_end(tmp_path, mnist_dir):
    """--device cpu --only bench-cuda: the probe, then gpumlp's bench (one row, one timing) in a
    real process, its JSON read from its file; the steps left out are recorded as such."""
    out = tmp_path / "out"
    argv = [sys.executable, str(SCRIPTS / "gpu_check.py"), "--device", "cpu", "--only", "bench-cuda",
            "--data-dir", str(mnist_dir), "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((out / "gpu-check.json").read_text())
    steps = result["steps"]
    assert steps["probe"]["status"] == "pass" and result["devices"]["auto"]
    assert steps["bench-cuda"]["status"] == "pass" and steps["bench-cuda"]["budget_s"] == 35
    (row,) = result["bench_cuda"]["rows"]
    assert row["name"] == "784-100-10" and row["steps"] > 0 and row["images_per_s"] > 0
    assert steps["train-seed"]["reason"] == "not among --only"
    assert steps["test-seed-on-cpu"]["reason"] == "not among --only"
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.json", "gpu-check.log"]
    assert "=== summary" in done.stdout and "rerun:" not in done.stdout
