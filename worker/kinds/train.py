"""Running a train job: in this process, or as torchrun's data-parallel ranks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.job.schemas import job_resources

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.db.models import Model
    from worker.training.artifacts import WrittenModel
    from worker.training.state import AttemptFence


class TrainRunner:
    name = "train"

    def run(
        self, settings: Settings, fence: AttemptFence, *, model_id: str
    ) -> tuple[Model, WrittenModel]:
        processes = job_resources(fence.job().spec).processes
        if processes > 1:
            from worker.training.launch import train_processes

            return train_processes(settings, fence, model_id=model_id, processes=processes)
        from worker.training.runner import train_job

        return train_job(settings, fence, model_id=model_id)
