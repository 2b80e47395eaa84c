#!/usr/bin/env bash
# Set up the environment and run the default (fast) test suite. Slow tests: add `-m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q --durations=15 "$@"  # the slowest 15 listed: what to trim when the suite grows
