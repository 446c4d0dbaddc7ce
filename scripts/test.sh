#!/usr/bin/env bash
# Quick start, command 2: set everything up and run the test suite (lint and type check first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
.venv/bin/python scripts/typecheck.py
# Tests against the real transformers video processors build their side venv on first use
# (tests/hf_reference.py, docs/backends.md); here a venv that cannot be made fails them.
export VIDEOPANDA_HF_REFERENCE=${VIDEOPANDA_HF_REFERENCE:-require}
# Test files run on TEST_WORKERS parallel workers (2: the CI machine's cores), each file whole on
# one worker, so a module's fixtures (a Ray cluster, a benchmark run) are set up once.
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
