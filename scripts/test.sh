#!/usr/bin/env bash
# Quick start, command 2: set everything up and run the test suite (lint and type check first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
.venv/bin/python scripts/typecheck.py
exec .venv/bin/python -m pytest "$@"
