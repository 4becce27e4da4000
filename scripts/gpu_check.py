"""Everything a machine with an NVIDIA GPU can tell about gpumlp's CUDA path, in one run and one JSON.

    python3 scripts/gpu_check.py --data-dir data/mnist            # results in $OUT, else ./gpu-results
    scripts/gpu_check.sh --offline --data-dir data/mnist          # the same, through the shell wrapper

Needs no network: the Python it runs with must already have numpy, typer, pytest and CuPy (and
PyTorch for the comparison; without it that step is skipped). gpumlp is installed in place with
``pip install --no-deps --no-build-isolation -e .``, or else found through PYTHONPATH. MNIST is read
from ``--data-dir`` (default $GPUMLP_DATA_DIR, else the checkout's git-ignored ``data/mnist``).

Steps, each timed and recorded as pass, fail or skip, in this order (the most telling first; each
gets what is left of ``--budget`` seconds): the GPU (nvidia-smi, ``gpumlp devices``), choosing CUDA
(the probe), ``pytest -m gpu``, the reference network (``--preset seed``, then again with
``--cuda-graph``) and ``--preset fast`` trained on CUDA and tested on the CPU, 784-800-10 at batch
1024, ``gpumlp bench --device cuda``, the same rows with PyTorch on CUDA (``scripts/bench_torch.py``),
``gpumlp bench --device cuda --cuda-graph``, and the test suite with every device the fixture
allows. Writes ``gpu-check.json`` and ``gpu-check.log`` (every step's whole output) to $OUT, and
nothing else there; exits 0 only when every step passed; without a GPU the steps that need one are
skipped and it exits 1, saying so.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Check:
    """The results so far, and the clock every step's timeout is taken from."""

    def __init__(self, out: Path, budget: float, env: dict, only: tuple[str, ...] = ()):
        self.out, self.deadline, self.env, self.only = out, time.monotonic() + budget, env, only
        self.result = {
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "python": sys.executable,
            "python_version": platform.python_version(),
            "steps": {},
        }
        self.gpu = False  # whether choosing CUDA succeeded
        (out / "gpu-check.log").unlink(missing_ok=True)

    def run(self, name: str, argv: list[str], timeout: float, needs_gpu: bool = True) -> tuple[dict, str]:
        """Run ``argv`` from the checkout; record status, seconds, exit code and the output's tail in
        the JSON, the whole output in ``gpu-check.log``. Returns (the step's record, its output)."""
        step, output = {"command": shlex.join(argv)}, ""
        left = self.deadline - time.monotonic()
        if self.only and not name.startswith(self.only) and name not in ("install", "devices", "probe"):
            step.update(status="skip", reason="not among --only")
        elif needs_gpu and not self.gpu:
            step.update(status="skip", reason="no usable CUDA GPU (see the probe step)")
        elif left < 10:
            step.update(status="skip", reason="the time budget is spent")
        else:
            print(f"\n=== {name}: {step['command']}", flush=True)
            t0 = time.monotonic()
            try:
                p = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                   timeout=min(timeout, left - 5))  # fmt: skip
                output, code = p.stdout + p.stderr, p.returncode
            except subprocess.TimeoutExpired as e:
                output, code = _text(e.stdout) + _text(e.stderr) + "\n(timed out)", "timeout"
            except OSError as e:  # the program is not installed
                output, code = f"{type(e).__name__}: {e}", "not found"
            step.update(status="pass" if code == 0 else "fail", returncode=code,
                        seconds=round(time.monotonic() - t0, 2), tail=output[-3000:])  # fmt: skip
            with open(self.out / "gpu-check.log", "a") as log:
                log.write(f"\n=== {name}: {step['command']}\n{output}\n")
            print(output[-1500:], flush=True)
        self.result["steps"][name] = step
        self.save()
        return step, output

    def save(self) -> None:
        (self.out / "gpu-check.json").write_text(json.dumps(self.result, indent=2, default=str) + "\n")


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _json_in(text: str):
    """The JSON object a command printed (its stdout may carry a line before it)."""
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None


def install(check: Check, python: str) -> None:
    """gpumlp in place without the network; PYTHONPATH covers a failed install."""
    step, _ = check.run("install", [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                                 "--no-index", "-e", "."], 120, needs_gpu=False)  # fmt: skip
    check.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), check.env.get("PYTHONPATH")]))
    if step["status"] != "pass":
        step["note"] = "continuing with PYTHONPATH (the gpumlp console script may be missing)"


def probe(check: Check, python: str) -> None:
    code = (
        "import json, gpumlp\n"
        "from gpumlp.backends.registry import get_backend\n"
        "from gpumlp.cli.devices import describe_devices\n"
        "d = describe_devices(); print(json.dumps(d))\n"
        "try:\n"
        "    be = get_backend('cuda')\n"
        "except gpumlp.BackendUnavailable as e:\n"
        "    raise SystemExit(f'error: {e}')\n"
        "print('chose', be.name, 'tf32', be.tf32)\n"
        "print('graphs', 'yes' if be.captures_graphs else f'no: {be.graph_unavailable}')\n"
    )
    check.run("devices", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv"], 30, needs_gpu=False)  # fmt: skip
    step, output = check.run("probe", [python, "-c", code], 120, needs_gpu=False)
    check.result["devices"] = _json_in(output.splitlines()[0]) if output else None
    check.gpu = step["status"] == "pass"


def train_and_test(check: Check, python: str, data_dir: str, preset: str, timeout: float, tmp: Path,
                   graph: bool = False) -> None:  # fmt: skip
    """``--preset`` on CUDA (with ``graph``, ``--cuda-graph``: step ``train-PRESET-graph``), then its
    checkpoint tested on the CPU; epoch times from the metrics file."""
    name = f"{preset}-graph" if graph else preset
    ckpt = tmp / f"{name}.npz"
    gpumlp = [python, "-m", "gpumlp"]
    step, _ = check.run(f"train-{name}", [*gpumlp, "train", "--preset", preset, "--device", "cuda", "--quiet",
                                       "--data-dir", data_dir, "--save", str(ckpt),
                                       *(["--cuda-graph"] if graph else [])], timeout)  # fmt: skip
    if graph and step["status"] == "pass":  # a capture that failed (or direct cuBLAS refused) trains on without
        tail = step["tail"]
        step["graph_fell_back"] = (
            "--cuda-graph: capturing the training step failed" in tail or "--cuda-graph: ignored" in tail
        )
    if step["status"] == "pass":
        m = re.search(r"test accuracy (\S+)%", step["tail"])
        step["test_accuracy_percent"] = float(m.group(1)) if m else None
        metrics = ckpt.with_name(ckpt.name + ".metrics.jsonl")
        if metrics.exists():
            epochs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            step["epoch_seconds"] = [round(e["seconds"], 4) for e in epochs]
            step["images_per_s"] = [round(e["images_per_s"] or 0) for e in epochs]
            step["training_seconds"] = round(sum(e["seconds"] for e in epochs), 3)
    if step["status"] != "pass":
        why = step["reason"] if step.get("reason") == "not among --only" else f"train-{name} did not pass"
        check.result["steps"][f"test-{name}-on-cpu"] = {"status": "skip", "reason": why}
        return
    cpu, _ = check.run(f"test-{name}-on-cpu", [*gpumlp, "test", str(ckpt), "--device", "cpu", "--data-dir", data_dir],
                    60, needs_gpu=False)  # fmt: skip
    m = re.search(r"test accuracy (\S+)%", cpu.get("tail", ""))
    cpu["test_accuracy_percent"] = float(m.group(1)) if m and cpu["status"] == "pass" else None
    check.save()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("GPUMLP_DATA_DIR") or str(ROOT / "data" / "mnist"))
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu-results"))
    p.add_argument("--budget", type=float, default=420, help="seconds for all steps together (default 420)")
    p.add_argument("--python", default=sys.executable, help="the Python to install into and run with")
    p.add_argument("--only", default="", help="comma-separated step names (or their starts) to run, e.g. "
                   "train-seed,test-seed,bench; the install and probe always run")  # fmt: skip
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = str(Path(a.data_dir).resolve())
    env = dict(os.environ, GPUMLP_DATA_DIR=data_dir, PYTHONUNBUFFERED="1")
    check = Check(out, a.budget, env, tuple(filter(None, a.only.split(","))))
    check.result["data_dir"] = data_dir
    check.result["data_files"] = sorted(f.name for f in Path(data_dir).glob("*")) if Path(data_dir).is_dir() else []
    try:  # a copy of the working tree may travel without its .git
        git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        check.result["commit"] = git.stdout.strip() or None
    except OSError:
        check.result["commit"] = None

    install(check, a.python)
    probe(check, a.python)
    pytest = [a.python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
    check.run("pytest-gpu", [*pytest, "-m", "gpu"], 150)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))  # checkpoints: not among the results
    train_and_test(check, a.python, data_dir, "seed", 90, tmp)
    train_and_test(check, a.python, data_dir, "seed", 90, tmp, graph=True)  # the same, one launch per batch
    train_and_test(check, a.python, data_dir, "fast", 60, tmp)
    check.run("large-batch-784-800-10", [a.python, "scripts/epoch_speed.py", "--device", "cuda", "--layers",
              "784,800,10", "--activation", "relu", "--loss", "ce", "--batch-size", "1024", "--lr", "0.1",
              "--epochs", "4", "--data-dir", data_dir], 60)  # fmt: skip
    bench, output = check.run("bench-cuda", [a.python, "-m", "gpumlp", "bench", "--device", "cuda", "--repeats", "3",
                                     "--no-extras", "--json", "--data-dir", data_dir], 120)  # fmt: skip
    check.result["bench_cuda"] = _json_in(output) if bench["status"] == "pass" else None
    if subprocess.run([a.python, "-c", "import torch"], capture_output=True).returncode == 0:
        argv = [
            a.python,
            "scripts/bench_torch.py",
            "--device",
            "cuda",
            "--repeats",
            "3",
            "--json",
            "--data-dir",
            data_dir,
        ]
        torch, output = check.run("bench-torch-cuda", argv, 120)
        check.result["bench_torch_cuda"] = _json_in(output) if torch["status"] == "pass" else None
    else:
        check.result["steps"]["bench-torch-cuda"] = {"status": "skip", "reason": "PyTorch is not installed"}
    # The same rows again, each that a graph can replay (every row but --preset best's) through one.
    graph, output = check.run("bench-cuda-graph", [a.python, "-m", "gpumlp", "bench", "--device", "cuda",
                              "--cuda-graph", "--repeats", "3", "--no-extras", "--json", "--data-dir", data_dir],
                              120)  # fmt: skip
    check.result["bench_cuda_graph"] = _json_in(output) if graph["status"] == "pass" else None
    # The whole suite last: on a GPU its device fixture adds a cuda case to every device test.
    check.run("pytest-all-devices", [*pytest, "-m", "not slow"], 240, needs_gpu=False)
    check.save()

    statuses = {name: s["status"] for name, s in check.result["steps"].items()}
    check.result["summary"] = statuses
    check.result["gpu_usable"] = check.gpu
    check.result["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    check.save()
    print("\n=== summary")
    for name, status in statuses.items():
        print(f"{name:<26} {status}")
    if not check.gpu:
        print("no usable CUDA GPU: the GPU steps were skipped (see the probe step above)")
    print(f"results: {out / 'gpu-check.json'}")
    selected = {k: v for k, v in check.result["steps"].items() if v.get("reason") != "not among --only"}
    return 0 if all(s["status"] == "pass" for s in selected.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
