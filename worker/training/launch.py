"""Start a data-parallel job's processes with torchrun and turn how they ended into the job's end.

The claiming worker process stays the job's owner: it heartbeats, watches for cancellation and
registers the model rank 0 wrote (or records the failure a rank reported). A rank that dies
without a word (killed, out of memory) loses the attempt: the job goes back to the queue and the
next attempt resumes from the newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.core.errors import ServiceError
from app.db.models import Model
from app.job.checkpoints import job_dir
from worker.training.artifacts import WrittenModel
from worker.training.rank import SETTINGS_ENV, outcome_path
from worker.training.state import AttemptFence, AttemptLost, FenceLost, JobCancelled

log = logging.getLogger("tuneserve.worker")
# After SIGTERM, how long torchrun has to stop its ranks before the group is killed.
STOP_GRACE_SECONDS = 20.0
LOG_TAIL_CHARS = 4000


class RankFailed(ServiceError):
    """A training process reported a failure (its code and message become the job's)."""


def launch_command(
    fence: AttemptFence, *, model_id: str, processes: int, outcome_dir: Path
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "worker.training.guard",
        "SIGTERM",  # torchrun stops its ranks if this worker dies
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # one machine: a local rendezvous on a free port
        f"--nproc-per-node={processes}",
        "--max-restarts=0",  # a lost rank loses the attempt; the job's retry resumes it
        "-m",
        "worker.training.rank",
        fence.job_id,
        str(fence.attempt),
        model_id,
        str(outcome_dir),
    ]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM torchrun (it stops its ranks), then SIGKILL its process group if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def wait_watching(proc: subprocess.Popen[bytes], fence: AttemptFence, *, poll_s: float) -> int:
    """Wait for torchrun to end, checking for cancellation every `poll_s` (JobCancelled)."""
    while True:
        try:
            return proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            fence.raise_if_cancelled()


# One failed rank in torchrun's failure report: "rank : 1 (local_rank: 1)" then "exitcode : -9".
RANK_EXIT = re.compile(r"rank\s*:\s*(\d+).*?\n\s*exitcode\s*:\s*(-?\d+)")


def failed_ranks(launcher_log: str) -> list[tuple[int, int]]:
    """(rank, exit status) of the ranks torchrun reports failed, the root cause first (a negative
    status is the signal that ended the rank)."""
    start = launcher_log.rfind("Failures:")
    if start < 0:
        return []
    report = launcher_log[start:]
    root = max(report.find("Root Cause"), 0)  # listed last; moved to the front
    found = RANK_EXIT.findall(report[root:]) + RANK_EXIT.findall(report[:root])
    return list(dict.fromkeys((int(rank), int(code)) for rank, code in found))


def describe(failed: list[tuple[int, int]]) -> str:
    parts = []
    for rank, code in failed:
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        parts.append(f"rank {rank} ended by {how}")
    return "; ".join(parts) or "torchrun gave no failure report"


def read_outcomes(outcome_dir: Path, processes: int) -> dict[int, dict[str, Any]]:
    found = {}
    for rank in range(processes):
        path = outcome_path(outcome_dir, rank)
        if path.is_file():
            found[rank] = json.loads(path.read_text())
    return found


def interpret(
    outcomes: dict[int, dict[str, Any]], *, status: int, launcher_log: str
) -> tuple[Model, WrittenModel]:
    """The model rank 0 made, or the exception that says why there is none."""
    main = outcomes.get(0, {})
    if main.get("outcome") == "succeeded":
        return Model(**main["model"]), WrittenModel(**main["written"])
    if main.get("outcome") == "cancelled":
        raise JobCancelled()
    if main.get("outcome") == "fence_lost":
        raise FenceLost(main.get("message", "the job moved on"))
    failed = failed_ranks(launcher_log)
    # The first rank to fail says why; its peers' errors (a connection reset by the dead
    # one) follow from it. A rank that reported nothing died: killed, or out of memory.
    first = failed[0][0] if failed else min(outcomes, default=None)
    report = outcomes.get(first) if first is not None else None
    if report is not None and report.get("outcome") == "failed":
        prefix = f"rank {first}: " if first else ""
        raise RankFailed(prefix + str(report.get("message")), code=report.get("code"))
    raise AttemptLost(
        f"a training process died ({describe(failed)}; torchrun exit status {status})"
    )


def train_processes(
    settings: Settings, fence: AttemptFence, *, model_id: str, processes: int
) -> tuple[Model, WrittenModel]:
    """Train the claimed job with `processes` data-parallel processes on this machine."""
    outcome_dir = job_dir(settings, fence.job_id) / f"launch-{fence.attempt}"
    shutil.rmtree(outcome_dir, ignore_errors=True)
    outcome_dir.mkdir(parents=True)
    env = {**os.environ, SETTINGS_ENV: settings.model_dump_json()}
    command = launch_command(fence, model_id=model_id, processes=processes, outcome_dir=outcome_dir)
    launcher_log = outcome_dir / "launcher.log"
    log.info("job %s: launching %s training processes", fence.job_id, processes)
    try:
        with launcher_log.open("wb") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                status = wait_watching(proc, fence, poll_s=settings.cancel_poll_seconds)
            finally:
                stop(proc)
        text = launcher_log.read_text(errors="replace")
        if status != 0:
            log.warning(
                "job %s: torchrun exit status %s; its log ends:\n%s",
                fence.job_id,
                status,
                text[-LOG_TAIL_CHARS:],
            )
        return interpret(read_outcomes(outcome_dir, processes), status=status, launcher_log=text)
    finally:
        shutil.rmtree(outcome_dir, ignore_errors=True)
