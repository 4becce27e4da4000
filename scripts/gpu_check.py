"""Everything a machine with an NVIDIA GPU can tell about gpumlp's CUDA path, in one run and one JSON.

    python3 scripts/gpu_check.py --data-dir data/mnist            # results in $OUT, else ./gpu-results
    scripts/gpu_check.sh --offline --data-dir data/mnist          # the same, through the shell wrapper
    scripts/gpu_check.sh --offline --plan                         # each step's budget and command, nothing run
    scripts/gpu_check.sh --offline --device cpu                   # every step, small, on the CPU: a rehearsal
    scripts/gpu_check.sh --offline --only bench-cuda,train-seed   # rerun steps (or steps starting so)

Needs no network: the Python it runs with must already have numpy, typer, pytest and CuPy (and
PyTorch for the comparison; without it that step is skipped). gpumlp runs from this checkout
(PYTHONPATH, ``python -m gpumlp``): nothing is installed. MNIST is read from ``--data-dir``
(default $GPUMLP_DATA_DIR, else the checkout's git-ignored ``data/mnist``).

Steps, the most telling first, each with its own time limit (``BUDGET``; ~300 s in all): the GPU
(nvidia-smi), choosing CUDA (the probe), ``pytest -m gpu``, the reference network (``--preset
seed``, then again with ``--cuda-graph``) and ``--preset fast`` trained on CUDA and tested on the
CPU, 784-800-10 at batch 1024, gpumlp's bench on CUDA, the same rows with PyTorch on CUDA, and
gpumlp's bench with ``--cuda-graph``; with ``--full``, last, the test suite with every device the
fixture allows. Each step is recorded as pass, fail or skip in ``gpu-check.json`` as soon as it
ends (a run cut off keeps what it measured), its whole output in ``gpu-check.log``; the benches
write their JSON to files of their own, read back here (never parsed out of mixed output). Exits
0 only when no step failed or was skipped for want of time or of a GPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALWAYS = ("devices", "probe")  # run even when --only leaves them out
# Seconds each step may take on an H100-class machine with a cold kernel cache: its timeout.
BUDGET = {
    "devices": 5, "probe": 20, "pytest-gpu": 75,
    "train-seed": 25, "test-seed-on-cpu": 8, "train-seed-graph": 20, "test-seed-graph-on-cpu": 8,
    "train-fast": 15, "test-fast-on-cpu": 8, "large-batch-784-800-10": 15,
    "bench-cuda": 35, "bench-torch-cuda": 35, "bench-cuda-graph": 25,
    "pytest-all-devices": 240,  # --full only
}  # fmt: skip
FELL_BACK = ("--cuda-graph: capturing the training step failed", "--cuda-graph: ignored")
_PROBE = """import json, sys, gpumlp
from gpumlp.backends.registry import get_backend
from gpumlp.cli.devices import describe_devices
with open(sys.argv[1], "w") as f:
    json.dump(describe_devices(), f)
try:
    be = get_backend(sys.argv[2])
except gpumlp.BackendUnavailable as e:
    raise SystemExit(f"error: {e}")
print("chose", be.name, "tf32", getattr(be, "tf32", None))
print("graphs", "yes" if be.captures_graphs else f"no: {getattr(be, 'graph_unavailable', None)}")
"""


@dataclass
class Step:
    """One command of the check: its name, time limit, argv, and where it writes its JSON result."""

    name: str
    argv: list[str]
    needs_gpu: bool = True
    json_out: Path | None = None  # the file the command writes its result to, read into result[key]
    key: str | None = None
    after: Callable[[Check, dict, str, str], None] | None = field(default=None, repr=False, compare=False)

    @property
    def budget(self) -> float:
        return BUDGET[self.name]


class Check:
    """The results so far, and the clock every step's time limit is taken from."""

    def __init__(self, out: Path, budget: float, env: dict, only: tuple[str, ...] = (), device: str = "cuda"):
        self.out, self.deadline, self.env, self.only = out, time.monotonic() + budget, env, only
        self.result = {
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "python": sys.executable,
            "python_version": platform.python_version(),
            "device": device,
            "budget_s": budget,
            "steps": {},
        }
        self.gpu = False  # whether choosing the device succeeded
        self.passed: set[str] = set()
        (out / "gpu-check.log").unlink(missing_ok=True)

    def selected(self, name: str) -> bool:
        return not self.only or name in ALWAYS or name.startswith(self.only)

    def run(self, step: Step) -> str:
        """Run ``step`` from the checkout within its budget and what is left of the whole; record it
        in the JSON at once, its whole output in ``gpu-check.log``. Returns its stdout and stderr."""
        record, output = {"command": shlex.join(step.argv), "budget_s": step.budget}, ""
        left = self.deadline - time.monotonic()
        if not self.selected(step.name):
            record.update(status="skip", reason="not among --only")
        elif step.needs_gpu and not self.gpu:
            record.update(status="skip", reason="the device could not be chosen (see the probe step)")
        elif left < 5:
            record.update(status="skip", reason="the time budget is spent")
        else:
            print(f"\n=== {step.name} (≤ {step.budget:.0f} s): {record['command']}", flush=True)
            t0 = time.monotonic()
            stdout, stderr, code = run_limited(step.argv, self.env, min(step.budget, left - 2))
            output = stdout + stderr
            record.update(status="pass" if code == 0 else "fail", returncode=code,
                          seconds=round(time.monotonic() - t0, 2), tail=output[-3000:])  # fmt: skip
            with open(self.out / "gpu-check.log", "a") as log:
                log.write(f"\n=== {step.name}: {record['command']}\n{stdout}\n--- stderr\n{stderr}\n")
            print(output[-1500:], flush=True)
            if step.key is not None:
                self.result[step.key] = read_json(step.json_out) if code == 0 else None
            if step.after is not None and code == 0:
                step.after(self, record, stdout, stderr)
        self.result["steps"][step.name] = record
        if record["status"] == "pass":
            self.passed.add(step.name)
        self.save()
        return output

    def save(self) -> None:
        path = self.out / "gpu-check.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.result, indent=2, default=str) + "\n")
        os.replace(tmp, path)  # whole or not at all, even if the run is killed here


def run_limited(argv: list[str], env: dict, timeout: float) -> tuple[str, str, int | str]:
    """(stdout, stderr, exit code or "timeout"/"not found") of ``argv`` run for at most ``timeout``
    seconds; on timeout its whole process group is killed, so no child keeps the pipes open."""
    try:
        p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # fmt: skip
    except OSError as e:  # the program is not installed
        return "", f"{type(e).__name__}: {e}", "not found"
    try:
        stdout, stderr = p.communicate(timeout=timeout)
        return stdout, stderr, p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        stdout, stderr = p.communicate()
        return stdout, stderr + f"\n(timed out after {timeout:.0f} s)", "timeout"


def read_json(path: Path | None):
    """The JSON a step wrote to its own file, or None if it wrote none (or not all of it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, AttributeError):
        return None


def graph_fell_back(output: str) -> bool:
    """Whether a ``--cuda-graph`` run said it trained without the graph, anywhere in its output."""
    return any(line in output for line in FELL_BACK)


def test_accuracy(output: str) -> float | None:
    """The last ``test accuracy N%`` a gpumlp command printed, in percent."""
    found = re.findall(r"^test accuracy (\S+)%", output, flags=re.MULTILINE)
    return float(found[-1]) if found else None


def _train(python: str, data_dir: str, device: str, preset: str, tmp: Path, graph: bool = False) -> list[Step]:
    """``--preset`` trained on ``device`` (with ``graph``, ``--cuda-graph``: ``train-PRESET-graph``),
    then its checkpoint tested on the CPU, which runs only if the training passed in this run."""
    name = f"{preset}-graph" if graph else preset
    ckpt = tmp / f"{name}.npz"
    gpumlp = [python, "-m", "gpumlp"]
    small = ["--epochs", "1", "--train-size", "1000", "--val-size", "500"] if device == "cpu" else []
    train = [*gpumlp, "train", "--preset", preset, "--device", device, "--quiet", "--data-dir", data_dir,
             "--save", str(ckpt), *small, *(["--cuda-graph"] if graph else [])]  # fmt: skip

    def trained(check: Check, record: dict, stdout: str, stderr: str) -> None:
        record["test_accuracy_percent"] = test_accuracy(stdout)
        if graph:  # a capture that failed (or direct cuBLAS refused) trains on without the graph
            record["graph_fell_back"] = graph_fell_back(stdout + stderr)
        metrics = ckpt.with_name(ckpt.name + ".metrics.jsonl")
        if metrics.exists():
            epochs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            record["epoch_seconds"] = [round(e["seconds"], 4) for e in epochs]
            record["images_per_s"] = [round(e["images_per_s"] or 0) for e in epochs]
            record["training_seconds"] = round(sum(e["seconds"] for e in epochs), 3)

    def tested(check: Check, record: dict, stdout: str, stderr: str) -> None:
        record["test_accuracy_percent"] = test_accuracy(stdout)

    test = [*gpumlp, "test", str(ckpt), "--device", "cpu", "--data-dir", data_dir]
    return [Step(f"train-{name}", train, after=trained),
            Step(f"test-{name}-on-cpu", test, needs_gpu=False, after=tested)]  # fmt: skip


def _benches(python: str, data_dir: str, device: str, tmp: Path) -> list[Step]:
    """784-800-10 at batch 1024, then gpumlp's bench, PyTorch's, and gpumlp's with ``--cuda-graph``,
    each bench writing its JSON to a file of its own in ``tmp``."""
    cpu = device == "cpu"
    large = "--layers 784,800,10 --activation relu --loss ce --batch-size 1024 --lr 0.1".split()
    large += ["--epochs", "1", "--train-size", "4096"] if cpu else ["--epochs", "4", "--train-size", "50000"]
    rows = ["--rows", "6", "--repeats", "1"] if cpu else ["--repeats", "3"]  # on the CPU one row: 160 steps
    common = ["--device", device, "--data-dir", data_dir, *rows]
    bench = [python, "scripts/bench.py", "--no-extras", *common]

    def to_file(name: str, argv: list[str], key: str) -> Step:
        out = tmp / f"{key}.json"
        return Step(name, [*argv, "--json-out", str(out)], json_out=out, key=key)

    return [
        Step(
            "large-batch-784-800-10",
            [python, "scripts/epoch_speed.py", "--device", device, *large, "--data-dir", data_dir],
        ),  # fmt: skip
        to_file("bench-cuda", bench, "bench_cuda"),
        to_file("bench-torch-cuda", [python, "scripts/bench_torch.py", *common], "bench_torch_cuda"),
        # The same rows again, each that a graph can replay (every row but --preset best's) through one.
        to_file("bench-cuda-graph", [*bench, "--cuda-graph"], "bench_cuda_graph"),
    ]


def plan(python: str, data_dir: str, device: str, tmp: Path, full: bool = False, torch: bool = True) -> list[Step]:
    """Every step in order. ``device="cpu"``: the same steps, small, on the CPU (a rehearsal)."""
    pytest = [python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
    smi = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"]
    devices = tmp / "devices.json"
    steps = [
        Step("devices", [python, "-m", "gpumlp", "devices"] if device == "cpu" else smi, needs_gpu=False),
        Step("probe", [python, "-c", _PROBE, str(devices), device], needs_gpu=False, json_out=devices, key="devices"),
        Step("pytest-gpu", [*pytest, "-m", "gpu"]),
        *_train(python, data_dir, device, "seed", tmp),
        *_train(python, data_dir, device, "seed", tmp, graph=True),  # the same, one launch per batch
        *_train(python, data_dir, device, "fast", tmp),
        *_benches(python, data_dir, device, tmp),
    ]
    if not torch:
        steps = [s for s in steps if s.name != "bench-torch-cuda"]
    if full:  # the whole suite: on a GPU its device fixture adds a cuda case to every device test
        steps.append(Step("pytest-all-devices", [*pytest, "-m", "not slow"], needs_gpu=False))
    return steps


def format_plan(steps: list[Step], check_only: tuple[str, ...] = ()) -> str:
    """Each step's budget and command, and the total: what a run would do, without running it."""
    chosen = [s for s in steps if not check_only or s.name in ALWAYS or s.name.startswith(check_only)]
    lines = [f"{s.name:<26} {s.budget:>5.0f} s  {'GPU ' if s.needs_gpu else '    '} {shlex.join(s.argv)}"
             for s in chosen]  # fmt: skip
    lines.append(f"{'total':<26} {sum(s.budget for s in chosen):>5.0f} s")
    return "\n".join(line.replace(_PROBE, "<probe>").replace(shlex.quote(_PROBE), "<probe>") for line in lines)


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("GPUMLP_DATA_DIR") or str(ROOT / "data" / "mnist"))
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu-results"))
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu: every step small, a rehearsal")
    p.add_argument("--budget", type=float, default=None, help="seconds for all steps together (default: their sum)")
    p.add_argument("--full", action="store_true", help="also the whole test suite, last (~240 s more)")
    p.add_argument("--plan", "--dry-run", action="store_true", help="print each step's budget and command; run none")
    p.add_argument("--python", default=sys.executable, help="the Python to run every step with")
    p.add_argument("--only", default="", help="comma-separated step names (or their starts) to run, e.g. "
                   "train-seed,bench; devices and the probe always run")  # fmt: skip
    return p.parse_args(argv)


def _start(check: Check, data_dir: str, previous: dict | None) -> None:
    """What the results say before any step: the data, the commit, and a rerun's earlier steps."""
    check.result["data_dir"] = data_dir
    check.result["data_files"] = sorted(f.name for f in Path(data_dir).glob("*")) if Path(data_dir).is_dir() else []
    try:  # a copy of the working tree may travel without its .git
        git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        check.result["commit"] = git.stdout.strip() or None
    except OSError:
        check.result["commit"] = None
    if previous and check.only:  # --only into the same folder: the steps not rerun keep their results
        check.result["earlier"] = {k: v for k, v in previous.items() if k != "earlier"}


def _finish(check: Check, out: Path, a) -> int:
    steps = check.result["steps"]
    check.result["summary"] = {name: s["status"] for name, s in steps.items()}
    check.result["gpu_usable"] = check.gpu
    check.result["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    check.save()
    print("\n=== summary (step, status, seconds of its budget)")
    for name, s in steps.items():
        spent = f"{s['seconds']:.0f} of {s['budget_s']:.0f} s" if "seconds" in s else s.get("reason", "")
        print(f"{name:<26} {s['status']:<5} {spent}")
    if not check.gpu:
        print(f"{a.device} could not be chosen: the steps that need it were skipped (see the probe step above)")
    bad = [
        n for n, s in steps.items() if s["status"] == "fail" or s.get("reason", "").startswith(("the time", "the dev"))
    ]
    if bad:
        print(f"rerun: scripts/gpu_check.sh --offline --data-dir {shlex.quote(a.data_dir)} --only {','.join(bad)}")
    print(f"results: {out / 'gpu-check.json'}")
    return 1 if bad else 0


def main(argv=None) -> int:
    a = _args(argv)
    out, data_dir = Path(a.out), str(Path(a.data_dir).resolve())
    only = tuple(filter(None, a.only.split(",")))
    torch = subprocess.run([a.python, "-c", "import torch"], capture_output=True).returncode == 0
    # Checkpoints and each step's JSON: not among the results ($OUT holds the two files alone).
    tmp = Path("<tmp>") if a.plan else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    steps = plan(a.python, data_dir, a.device, tmp, a.full, torch)
    if a.plan:
        print(format_plan(steps, only))
        print(f"(on {a.device}; PyTorch {'found' if torch else 'not installed: bench-torch-cuda skipped'})")
        return 0
    chosen = [s for s in steps if not only or s.name in ALWAYS or s.name.startswith(only)]
    budget = a.budget if a.budget is not None else sum(s.budget for s in chosen)
    out.mkdir(parents=True, exist_ok=True)
    previous = read_json(out / "gpu-check.json")
    env = dict(os.environ, GPUMLP_DATA_DIR=data_dir, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))  # gpumlp from here
    if a.device == "cpu":  # a rehearsal checks code paths, not speed: PyTorch's spinning threads stall on a busy CPU
        env.setdefault("OMP_NUM_THREADS", "1")
    check = Check(out, budget, env, only, a.device)
    _start(check, data_dir, previous)
    if not torch:
        check.result["steps"]["bench-torch-cuda"] = {"status": "skip", "reason": "PyTorch is not installed"}
    for step in steps:
        if step.name.startswith("test-") and f"train-{step.name[5:-7]}" not in check.passed:
            why = "not among --only" if not check.selected(f"train-{step.name[5:-7]}") else "its training did not pass"
            check.result["steps"][step.name] = {"status": "skip", "reason": why, "budget_s": step.budget}
            continue
        check.run(step)
        if step.name == "probe":
            check.gpu = check.result["steps"]["probe"]["status"] == "pass"
    return _finish(check, out, a)


if __name__ == "__main__":
    sys.exit(main())
