"""The TrainingMethod base: what the worker does for a fine-tuning method.

The API side of a method (its options, submit checks, artifact, serving) is app/ml/methods; this
side, under the same name, makes the trainable model from the starting one, takes part in
training where it must (positions it reserves, a schedule over the job's steps, callbacks), says
how it was applied, and saves the trained model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic

from app.ml.methods.base import MERGED, OptionsT

if TYPE_CHECKING:
    from transformers import PreTrainedModel, TrainerCallback

    from app.ml.tasks import TaskSpec


class TrainingMethod(Generic[OptionsT]):
    """One fine-tuning method, as the worker runs it; the defaults train every weight of the
    model as it is. The registry (worker/training/methods/__init__.py) holds one per method."""

    name: str

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

    def save(self, model: Any, tokenizer: Any, directory: Path, *, artifact: str) -> None:
        """Write the trained model and its tokenizer into `directory`, as `artifact` says (the
        API side's artifact for the job's options): a whole model, an adapter alone (with the
        trained head), or the adapter folded into the base weights (MERGED)."""
        # Full models: config (with id2label) + model.safetensors. Adapters: adapter_config.json
        # + adapter_model.safetensors, the head included through modules_to_save.
        target = model.merge_and_unload() if artifact == MERGED else model
        target.save_pretrained(str(directory), safe_serialization=True)
        tokenizer.save_pretrained(str(directory))
