#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: install gpumlp with CuPy, show the GPU, run the
# GPU tests, train one epoch on the GPU, check a GPU checkpoint on the CPU, and time both devices.
#
#   scripts/gpu_check.sh            # CUDA 12 (cupy-cuda12x)
#   scripts/gpu_check.sh cuda13     # CUDA 13 (cupy-cuda13x)
#
# MNIST is read from $GPUMLP_DATA_DIR (or downloaded to ~/.cache/gpumlp/mnist).
set -uo pipefail
cd "$(dirname "$0")/.."
extra="${1:-cuda12}"
case "$extra" in cuda12|cuda13) ;; *) echo "usage: $0 [cuda12|cuda13]" >&2; exit 2;; esac

venv=.venv-gpu
python3 -m venv "$venv" && source "$venv/bin/activate" || exit 1
python -m pip install -q --upgrade pip
pip install -q -e ".[$extra,test]" || { echo "install of .[$extra,test] failed" >&2; exit 1; }

declare -A result
step() {  # step NAME COMMAND...: run, remember pass/fail
  local name="$1"; shift
  echo; echo "=== $name: $*"
  if "$@"; then result[$name]=pass; else result[$name]=FAIL; fi
}

step gpu nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
step cupy python -c "import cupy; print('CuPy', cupy.__version__, '| CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(), '| GPUs', cupy.cuda.runtime.getDeviceCount())"
step gpu-tests python -m pytest -m gpu -q -rs
ckpt="$(mktemp -d)/gpu_check.npz"
step train-cuda gpumlp train --device cuda --epochs 1 --save "$ckpt"
step test-on-cpu gpumlp test "$ckpt" --device cpu
step speed-cuda python scripts/epoch_speed.py --device cuda --epochs 3
step speed-cpu python scripts/epoch_speed.py --device cpu --epochs 3
step speed-cuda-large python scripts/epoch_speed.py --device cuda --layers 784,800,10 --activation relu --loss ce --batch-size 1024 --lr 0.1 --epochs 3

echo; echo "=== summary"
failed=0
for name in gpu cupy gpu-tests train-cuda test-on-cpu speed-cuda speed-cpu speed-cuda-large; do
  printf '%-18s %s\n' "$name" "${result[$name]:-not run}"
  [ "${result[$name]:-}" = pass ] || failed=1
done
exit $failed
