#!/usr/bin/env bash
# Keep pyproject.toml's lower bounds honest: install every dependency at exactly the lower bound
# pyproject.toml states (torch from requirements/torch.txt, as scripts/install.sh does), then run
# the tests that exercise the ML and web stacks against them.
#
#   bash scripts/lowest.sh                 build .venv-lowest and run the default test subset
#   bash scripts/lowest.sh tests/job       ... or the tests named instead
#
# VENV (default .venv-lowest) and PYTHON (default python3) choose the environment and the
# interpreter. After raising or lowering a bound, run this before committing it.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-lowest}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install --quiet packaging

# `name>=X` becomes `name==X` for the dependencies and every extra; torch is installed first.
constraints="$VENV/lowest-constraints.txt"
"$VENV/bin/python" - >"$constraints" <<'PY'
import tomllib

from packaging.requirements import Requirement

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
specs = list(project["dependencies"])
for extra in project.get("optional-dependencies", {}).values():
    specs += extra
for spec in specs:
    req = Requirement(spec)
    if req.name == "torch":
        continue
    for s in req.specifier:
        if s.operator == ">=":
            print(f"{req.name}=={s.version}")
PY
echo "lower bounds:" $(cat "$constraints")

"${pip[@]}" install --quiet -r requirements/torch.txt
"${pip[@]}" install --quiet -c "$constraints" -e '.[models,dev]'
"${pip[@]}" check

if [ "$#" -eq 0 ]; then
    set -- tests/ml tests/worker/test_methods.py tests/predict/test_predictor.py \
        tests/predict/test_shared_adapters.py tests/test_errors_plain.py tests/job
fi
PYTHONPATH=$PWD "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
