"""Running a quantize job: the parent and its int8 copy, evaluated side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.db.models import Model
    from worker.training.artifacts import WrittenModel
    from worker.training.state import AttemptFence


class QuantizeRunner:
    name = "quantize"

    def run(
        self, settings: Settings, fence: AttemptFence, *, model_id: str
    ) -> tuple[Model, WrittenModel]:
        from worker.training.quantize import quantize_job

        return quantize_job(settings, fence, model_id=model_id)
