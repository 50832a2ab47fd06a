"""Running an export job: the parent as an ONNX graph, evaluated beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.db.models import Model
    from worker.training.artifacts import WrittenModel
    from worker.training.state import AttemptFence


class ExportRunner:
    name = "export"

    def run(
        self, settings: Settings, fence: AttemptFence, *, model_id: str
    ) -> tuple[Model, WrittenModel]:
        from worker.training.export import export_job

        return export_job(settings, fence, model_id=model_id)
