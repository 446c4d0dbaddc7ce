#!/usr/bin/env bash
# Quick start, command 1: set everything up and run the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/videopanda demo "$@"
