#!/usr/bin/env bash
# Create .venv and install flareseg with every extra and the test tools (idempotent: skips when nothing changed).
#
# torch is pinned to 2.13.0. Which build: FLARESEG_TORCH=cpu|cuda|auto (default auto: CUDA where
# `nvidia-smi` sees a GPU, else CPU). For the CPU build the configured package index is used when it
# already serves one (a "+cpu" wheel, as on machines with a local wheel cache); otherwise PyTorch's
# own CPU wheel index, so that a machine without a GPU never downloads the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
say() { echo "flareseg setup: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.flareseg-installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then
  exit 0
fi
pip=(.venv/bin/python -m pip)
say "upgrading pip"
"${pip[@]}" install --quiet --upgrade pip
torch_spec=$(grep -E '^torch==' constraints.txt)
choice=${FLARESEG_TORCH:-auto}
if [ "$choice" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then choice=cuda; else choice=cpu; fi
fi
index=()
if [ "$choice" = cpu ]; then
  url=$("${pip[@]}" install --dry-run --quiet --ignore-installed --no-deps --report - "$torch_spec" 2>/dev/null \
    | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["install"][0]["download_info"]["url"])' 2>/dev/null || true)
  case "$url" in
    *%2Bcpu*|*+cpu*) ;;
    *) index=(--index-url https://download.pytorch.org/whl/cpu) ;;
  esac
elif [ "$choice" != cuda ]; then
  say "FLARESEG_TORCH must be cpu, cuda or auto, got '$choice'"
  exit 2
fi
say "installing $torch_spec ($choice build${index:+ from the PyTorch CPU index}); this takes a minute or two"
"${pip[@]}" install --quiet "${index[@]}" "$torch_spec"
say "installing flareseg with its extras and test tools"
"${pip[@]}" install --quiet -c constraints.txt -e '.[all,dev]'
rm -f .venv/.flareseg-installed-*
touch "$stamp"
say "ready: $(.venv/bin/python -c 'import torch, flareseg; print(f"flareseg {flareseg.__version__}, torch {torch.__version__}")')"
