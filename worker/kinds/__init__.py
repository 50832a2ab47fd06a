"""The worker's side of the job kind registry: what runs a job of each kind, by the name the API
side (app/job/kinds) gives it. A kind is a file here and a line below."""

from __future__ import annotations

from app.job.kinds import job_kind
from worker.kinds.base import JobRunner
from worker.kinds.export import ExportRunner
from worker.kinds.quantize import QuantizeRunner
from worker.kinds.train import TrainRunner

JOB_RUNNERS: dict[str, JobRunner] = {
    runner.name: runner
    for runner in (
        TrainRunner(),
        QuantizeRunner(),
        ExportRunner(),
    )
}


def job_runner(method_type: str) -> JobRunner:
    """What runs a job submitted with `method.type` = `method_type`."""
    return JOB_RUNNERS[job_kind(method_type).name]


__all__ = ["JOB_RUNNERS", "JobRunner", "job_runner"]
