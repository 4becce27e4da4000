#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: show the GPU, choose CUDA (the probe), run the GPU
# tests, train the reference network and --preset fast on the GPU and test them on the CPU, time
# gpumlp and PyTorch on CUDA; each step within its own time limit, ~300 s in all; one JSON of
# results (scripts/gpu_check.py, whose options follow: --plan, --device cpu, --full, --only STEP,…).
#
#   scripts/gpu_check.sh --offline [--data-dir DIR]   # no network: this python3 already has CuPy,
#                                                     # numpy, typer, pytest (and PyTorch)
#   scripts/gpu_check.sh --offline --plan             # each step's time limit and command, nothing run
#   scripts/gpu_check.sh --offline --device cpu       # every step, small, on the CPU: a rehearsal
#   scripts/gpu_check.sh [cuda12|cuda13] [--data-dir DIR]
#                                                     # a fresh .venv-gpu with .[cudaNN,test] from PyPI
#
# MNIST comes from --data-dir, else $GPUMLP_DATA_DIR, else the checkout's git-ignored data/mnist.
# Results go to $OUT (default ./gpu-results): gpu-check.json, written as each step ends, and
# gpu-check.log. Exit 0 only when no step failed; the summary prints the --only line that reruns
# the failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--offline" ]; then
  shift
  exec python3 scripts/gpu_check.py "$@"
fi

extra=cuda12
case "${1:-}" in cuda12|cuda13) extra="$1"; shift;; esac
venv=.venv-gpu
python3 -m venv "$venv" && source "$venv/bin/activate" || exit 1
python -m pip install -q --upgrade pip
pip install -q -e ".[$extra,test]" || { echo "install of .[$extra,test] failed" >&2; exit 1; }
# (PyTorch is not installed here: pip install torch first for the PyTorch CUDA comparison.)
exec python scripts/gpu_check.py "$@"
