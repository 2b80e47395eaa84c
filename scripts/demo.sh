#!/usr/bin/env bash
# Set up the environment and run the end-to-end demo on the built-in synthetic cohort.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/flareseg demo --out "${DEMO_OUT:-runs/demo}" "$@"
