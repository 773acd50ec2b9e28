#!/usr/bin/env bash
# The leaf benchmark with the leaf's models on a CUDA GPU: the same table as
# `rootleaf bench leaf` (sparse and dense cases, Leaf/Score and Leaf/ScorePartition,
# batching on and off). Run from a checkout on a machine with a GPU and the project's
# venv: `benchmarks/cuda_leaf.sh [more bench-leaf flags, e.g. --json out.json]`.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
"$python" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("cuda_leaf.sh: torch.cuda.is_available() is False on this machine")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
PY
PYTHONPATH=$PWD exec "$python" -m benchmarks.cli leaf --device cuda "$@"
