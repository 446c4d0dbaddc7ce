#!/usr/bin/env bash
# Create .venv (if missing) and install the project with pinned dependencies.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   plus test tools, Azurite and playwright-core (npm, into
#                             ./node_modules) and Debian's chromium (eval report rendering)
# PyTorch: `pip install torch==2.13.0` as configured on this project's machines (the CPU build).
# GPU machines: set TORCH_INDEX_URL to PyTorch's wheel index for your CUDA version, or install the
# CUDA build into .venv before running this script; an installed torch is left in place.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "Python >= 3.11 is required (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# Reinstall only when the dependency pins change.
extras=""
[[ $want_test == 1 ]] && extras="[test]"
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)${extras:+-test}"
if [[ ! -f "$stamp" ]]; then
  # torch first and exactly pinned, so pip never resolves a multi-GB CUDA build on its own.
  if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    "${PIP[@]}" install "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  fi
  "${PIP[@]}" install -e ".${extras}"
  touch "$stamp"
fi

if [[ $want_test == 1 ]]; then
  node_stamp="node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)"
  if [[ ! -f "$node_stamp" ]]; then
    command -v npm >/dev/null 2>&1 || { echo "npm is required for the test suite (Azurite)" >&2; exit 1; }
    npm ci --no-audit --no-fund --loglevel=error
    touch "$node_stamp"
  fi
  if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    [[ $(id -u) != 0 ]] && SUDO="sudo"
    $SUDO apt-get install -y -q chromium >/dev/null \
      || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; } \
      || { echo "Debian's chromium is required for the report tests (apt-get install chromium)" >&2; exit 1; }
  fi
fi
