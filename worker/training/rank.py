"""One process of a data-parallel job, started by torchrun (see launch.py):

    python -m worker.training.rank JOB_ID ATTEMPT MODEL_ID OUTCOME_DIR

Every rank trains on its shard; rank 0 alone writes events, checkpoints and the model. Each rank
that ends otherwise than by finishing its part writes OUTCOME_DIR/rank-<r>.json saying how, and
rank 0 writes its outcome in any case (the model row it made, or why it made none), which the
launching worker turns into the job's end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.core.errors import InvalidInput
from app.core.logging import configure_logging
from app.db.session import make_engine, make_sessionmaker
from worker.training.guard import die_with_parent
from worker.training.state import AttemptFence, FenceLost, FollowerFence, JobCancelled
from worker.training.world import World

log = logging.getLogger("tuneserve.worker")
# The launching worker's settings, as JSON (a test's or a CLI's settings need not be in the env).
SETTINGS_ENV = "TUNESERVE_LAUNCH_SETTINGS"
# Exit statuses of a rank that ended on purpose (any other non-zero one: it crashed).
EXIT_FAILED, EXIT_CANCELLED, EXIT_FENCE_LOST = 1, 3, 4


def outcome_path(outcome_dir: Path, rank: int) -> Path:
    return outcome_dir / f"rank-{rank}.json"


def write_outcome(outcome_dir: Path, rank: int, outcome: dict[str, Any]) -> None:
    path = outcome_path(outcome_dir, rank)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(outcome, default=str))
    os.replace(tmp, path)  # whole or absent


def process_group_backend(world: World) -> str:
    """NCCL with one GPU per rank where there are GPUs, else gloo on CPU."""
    import torch

    if not torch.cuda.is_available():
        return "gloo"
    gpus = torch.cuda.device_count()
    if world.local_rank >= gpus:
        raise InvalidInput(
            f"resources.processes: {world.size} processes need one GPU each; this worker has"
            f" {gpus}",
            field="resources.processes",
            code="not_enough_gpus",
        )
    torch.cuda.set_device(world.local_rank)
    return "nccl"


def model_fields(row: Any) -> dict[str, Any]:
    """The values a Model row was made with (what the launching worker rebuilds it from)."""
    return {k: v for k, v in vars(row).items() if not k.startswith("_")}


def run(settings: Settings, *, job_id: str, attempt: int, model_id: str, outcome_dir: Path) -> int:
    from worker.jobs import error_code, error_message
    from worker.training.runner import train_rank

    world = World.from_env()
    engine = make_engine(settings)
    fence_type = AttemptFence if world.is_main else FollowerFence
    fence = fence_type(
        make_sessionmaker(engine),
        job_id=job_id,
        attempt=attempt,
        db_retry_seconds=settings.db_retry_seconds,
    )
    try:
        world.join(process_group_backend(world))
        pids = world.gather(os.getpid())
        fence.log(
            f"training on {world.size} data-parallel processes (pids {pids})",
            processes=world.size,
            pids=pids,
        )
        trained = train_rank(settings, fence, model_id=model_id, world=world)
        if trained is not None:
            row, written = trained
            outcome = {
                "outcome": "succeeded",
                "model": model_fields(row),
                "written": asdict(written),
            }
            write_outcome(outcome_dir, world.rank, outcome)
        world.leave()
        return 0
    except JobCancelled:
        write_outcome(outcome_dir, world.rank, {"outcome": "cancelled"})
        return EXIT_CANCELLED
    except FenceLost as exc:
        write_outcome(outcome_dir, world.rank, {"outcome": "fence_lost", "message": str(exc)})
        return EXIT_FENCE_LOST
    except Exception as exc:
        log.exception("job %s: rank %s failed", job_id, world.rank)
        failure = {"code": error_code(exc), "message": error_message(exc)}
        write_outcome(outcome_dir, world.rank, {"outcome": "failed", **failure})
        return EXIT_FAILED
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    job_id, attempt, model_id, outcome_dir = argv if argv is not None else sys.argv[1:]
    die_with_parent(int(signal.SIGKILL))  # no rank outlives its torchrun
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logging()
    return run(
        settings,
        job_id=job_id,
        attempt=int(attempt),
        model_id=model_id,
        outcome_dir=Path(outcome_dir),
    )


if __name__ == "__main__":
    sys.exit(main())
