"""The TrainingMethod base: what the worker does for a fine-tuning method.

The API side of a method (its options, submit checks, artifact, serving) is app/ml/methods; this
side, under the same name, makes the trainable model from the starting one, takes part in
training where it must (positions it reserves, a schedule over the job's steps, callbacks), says
how it was applied, and saves the trained model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic

from app.ml.methods.base import MERGED, OptionsT

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, Trainer, TrainerCallback

    from app.basemodel.schemas import ResolvedBaseModel
    from app.core.config import Settings
    from app.ml.tasks import TaskSpec
    from worker.training.state import AttemptFence


@dataclass
class StartingModel:
    """The model a job starts training from, and what its method keeps beside it for the job."""

    model: PreTrainedModel
    # The task head's weight names (new, or a continued model's), which train in full.
    new_weights: list[str]
    # What the method keeps for the rest of the job (distill: the frozen teacher).
    state: Any = None
    # Entries the method adds to the model's metadata (distill: "distillation").
    metadata: dict[str, Any] = field(default_factory=dict)


class TrainingMethod(Generic[OptionsT]):
    """One fine-tuning method, as the worker runs it; the defaults train every weight of the
    model as it is. The registry (worker/training/methods/__init__.py) holds one per method."""

    name: str

    def start(
        self,
        settings: Settings,
        fence: AttemptFence,
        *,
        task: TaskSpec,
        base: ResolvedBaseModel,
        options: OptionsT,
        label_names: list[str],
    ) -> StartingModel:
        """The model the job starts from, before `prepare`: the job's base (a catalog model with
        a new head, or a registered model going on) with the job's labels."""
        from app.ml.lineage import load_starting_model

        model, new_weights = load_starting_model(task, base, label_names=label_names)
        return StartingModel(model, new_weights)

    def prepare(
        self,
        model: PreTrainedModel,
        *,
        task: TaskSpec,
        options: OptionsT,
        new_weights: list[str],
    ) -> Any:
        """The model to train: `model` with the method's weights added (an adapter) or all but
        those it trains frozen. `new_weights` name the task head, which trains in full."""
        return model

    def train_rows(
        self,
        settings: Settings,
        fence: AttemptFence,
        *,
        task: TaskSpec,
        starting: StartingModel,
        options: OptionsT,
        rows: datasets.Dataset,
        label_names: list[str],
        tokenizer: Any,
    ) -> datasets.Dataset:
        """The rows the model trains on: the train split as given (distill adds a transfer set
        its teacher labels)."""
        return rows

    def reserved_positions(self, options: OptionsT, config: Any) -> int:
        """Position embeddings the method takes from the input (a prefix's virtual tokens)."""
        return 0

    def schedule(self, model: Any, options: OptionsT, *, total_steps: int) -> None:
        """Fit what depends on the job's step count (known once "auto" values are resolved,
        after `prepare`) to `total_steps`."""

    def applied(self, model: Any) -> dict[str, Any]:
        """The method's settings as applied (modules found from the architecture, a schedule),
        recorded beside its options in the model's metadata."""
        return {}

    def callbacks(self, model: Any) -> list[TrainerCallback]:
        """Trainer callbacks the prepared model needs while it trains."""
        return []

    def trainer_class(self, trainer: type[Trainer], starting: StartingModel) -> type[Trainer]:
        """The Trainer class the job trains with: `trainer`, or one whose training steps the
        method changes (distill adds the teacher's soft targets to the loss)."""
        return trainer

    def parent_metrics(
        self, trainer: Trainer, starting: StartingModel, fence: AttemptFence
    ) -> dict[str, Any] | None:
        """Called on every rank after training: the metrics, on the same validation rows, of the
        model the trained one is read beside (the model row's parent_metrics), or None."""
        return None

    def save(self, model: Any, tokenizer: Any, directory: Path, *, artifact: str) -> None:
        """Write the trained model and its tokenizer into `directory`, as `artifact` says (the
        API side's artifact for the job's options): a whole model, an adapter alone (with the
        trained head), or the adapter folded into the base weights (MERGED)."""
        # Full models: config (with id2label) + model.safetensors. Adapters: adapter_config.json
        # + adapter_model.safetensors, the head included through modules_to_save.
        target = model.merge_and_unload() if artifact == MERGED else model
        target.save_pretrained(str(directory), safe_serialization=True)
        tokenizer.save_pretrained(str(directory))
