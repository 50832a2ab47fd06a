#!/usr/bin/env bash
# Write the lock files from pyproject.toml with pip-tools (pip's own resolver, so the torch pin
# resolves as `pip install` resolves it): requirements/service.lock (dependencies and the `models`
# extra) and requirements/dev.lock (the same versions plus the `dev` extra), each pin with its
# sha256 hashes. torch stays out of both (requirements/torch.txt installs it first); its own
# dependencies are locked.
#
#   bash scripts/lock.sh             add what pyproject.toml gained, keep every other pin
#   bash scripts/lock.sh --upgrade   re-resolve everything to the newest releases
#
# `bash .ci/run --latest` runs the second and then the tests against the result.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${LOCK_VENV:-.venv-lock}
if [ ! -x "$TOOLS/bin/pip-compile" ]; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install --quiet pip-tools==7.7.0
fi
common=(
    --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links
    --unsafe-package torch --constraint requirements/torch.txt
)
"$TOOLS/bin/pip-compile" "${common[@]}" "$@" --extra models \
    --output-file requirements/service.lock pyproject.toml
"$TOOLS/bin/pip-compile" "${common[@]}" "$@" --extra models --extra dev \
    --constraint requirements/service.lock --output-file requirements/dev.lock pyproject.toml
git --no-pager diff --stat -- requirements/ 2>/dev/null || true
