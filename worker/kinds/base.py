"""The JobRunner protocol: what the worker does for a kind of job (app/job/kinds is the API's side
of the same name). A runner is imported by the worker parent, so what it runs is imported only
when it runs (the parent never loads the training libraries on a GPU machine)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.core.config import Settings
    from app.db.models import Model
    from worker.training.artifacts import WrittenModel
    from worker.training.state import AttemptFence


class JobRunner(Protocol):
    name: str

    def run(
        self, settings: Settings, fence: AttemptFence, *, model_id: str
    ) -> tuple[Model, WrittenModel]:
        """Run the claimed job and write models/<model_id>; the Model row to register (not
        inserted) and its written directory."""
        ...
