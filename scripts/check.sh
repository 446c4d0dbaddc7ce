#!/usr/bin/env bash
# The fast loop (`make check`): lint, format, type check against its baseline, tests not marked slow.
# The full suite, slow tests included, is scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
.venv/bin/python scripts/typecheck.py
exec .venv/bin/python -m pytest -q -m "not slow" -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
