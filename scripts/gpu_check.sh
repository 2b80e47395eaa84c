#!/usr/bin/env bash
# The GPU check (issue 11/14): paper-preset training speed and fast/accurate prediction on CUDA, into one JSON.
#
# On a lent GPU machine (the image holds torch; flareseg's other dependencies travel as wheels in .whl/):
#   bash scripts/gpu_check.sh "$OUT/gpu_check.json"
# Anywhere, on the CPU, in seconds (what the test suite runs):
#   bash scripts/gpu_check.sh --dry-run /tmp/gpu_check.json
set -euo pipefail
cd "$(dirname "$0")/.."
dry=()
if [ "${1:-}" = "--dry-run" ]; then dry=(--dry-run); shift; fi
out=${1:?usage: gpu_check.sh [--dry-run] OUT.json}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ ${#dry[@]} -gt 0 ] && python=.venv/bin/python
if [ -d .whl ] && [ ${#dry[@]} -eq 0 ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
[ -n "${CUDA_VISIBLE_DEVICES:-}" ] || nvidia-smi -L 2>/dev/null || true
exec "$python" scripts/gpu_check.py "${dry[@]}" --out "$out"
