#!/usr/bin/env bash
# GPU benchmark in under 5 minutes: prints the GPU and versions, then runs
# benchmarks/bench_gpu.py (images/s per backbone at batch 64/256, vectorised 2-D seeds/s,
# Table 1's projected wall time) under `timeout 290`. Run from anywhere:
#
#   benchmarks/gpu.sh [bench_gpu.py options]          # e.g. --budget-s 200
#
# PYTHON: the interpreter to use (default .venv/bin/python if present, else python3). It
#   must import torch with CUDA and have this project installed (`pip install -e .`: the
#   plugins are found through its entry points). On a machine without package access,
#   carry wheels of what is missing (pydantic, pydantic-core, annotated-types,
#   typing-inspection, ...) in a folder and set GPU_INSTALL=1 WHEELS=that/folder: the
#   script then installs them and the project (--no-deps --no-index) before running.
# OUT: if set (a folder), the results go to $OUT/bench_gpu.json and the log to
#   $OUT/bench_gpu.log as well as the terminal.
# Exit codes: bench_gpu.py's (2: no CUDA device or a bad option), 124 if it ran past 290 s
# (the JSON then holds every case finished before).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null || { echo "gpu.sh: PYTHON=$PYTHON not found" >&2; exit 2; }

if [[ "${GPU_INSTALL:-0}" == 1 ]]; then
    wheels=()
    if [[ -n "${WHEELS:-}" ]]; then wheels=("$WHEELS"/*.whl); fi
    "$PYTHON" -m pip install -q --no-deps --no-index --no-build-isolation "${wheels[@]}" -e .
fi

if ! "$PYTHON" -c 'import importlib.metadata as m, pydantic, torch; m.version("gan-harness")' \
        2>/dev/null; then
    echo "gpu.sh: $PYTHON cannot import the installed project (pip install -e ., or" \
         "GPU_INSTALL=1 WHEELS=DIR; see the header of benchmarks/gpu.sh)" >&2
    exit 2
fi

echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    2>/dev/null || echo "nvidia-smi: not available"
"$PYTHON" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, cuda available: {torch.cuda.is_available()}")'

args=("$@")
log=/dev/null
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    args+=(--json "$OUT/bench_gpu.json")
    log="$OUT/bench_gpu.log"
fi
set +e
PYTHONUNBUFFERED=1 timeout 290 "$PYTHON" benchmarks/bench_gpu.py "${args[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [[ $status == 124 ]]; then
    echo "gpu.sh: bench_gpu.py ran past 290 s and was stopped (results so far are in the JSON)" >&2
fi
exit "$status"
