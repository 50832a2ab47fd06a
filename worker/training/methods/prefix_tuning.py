"""Prefix tuning: trained key/value vectors before every attention layer's input; the new head
trains and is saved with them. The prefix takes positions from the input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.errors import InvalidInput
from app.ml.methods.prefix_tuning import PrefixTuningMethod
from worker.training.heads import trained_in_full
from worker.training.methods.adapter import AdapterMethod

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from app.ml.tasks import TaskSpec

# The shortest input a prefix may leave room for (the least hyperparameters.max_length allows).
MIN_INPUT_TOKENS = 8


class PrefixTuningTraining(AdapterMethod[PrefixTuningMethod]):
    name = "prefix_tuning"

    def prepare(
        self,
        model: PreTrainedModel,
        *,
        task: TaskSpec,
        options: PrefixTuningMethod,
        new_weights: list[str],
    ) -> Any:
        """Prepend trained key/value vectors to every attention layer; the head trains in full."""
        from peft import PrefixTuningConfig, TaskType, get_peft_model

        from app.ml.prefix import accept_prefix

        if task.peft_task_type is None or self.name in task.unsupported_methods:
            # Submission refuses these jobs; a job row written some other way fails here.
            raise InvalidInput(
                f"method.type: '{self.name}' cannot train '{task.name}' models",
                field="method.type",
            )
        config = PrefixTuningConfig(
            task_type=TaskType(task.peft_task_type),
            num_virtual_tokens=options.num_virtual_tokens,
            prefix_projection=options.prefix_projection,
            encoder_hidden_size=options.encoder_hidden_size or model.config.hidden_size,
            modules_to_save=trained_in_full(model, new_weights) or None,
        )
        try:
            accept_prefix(model)
        except ValueError as exc:
            raise InvalidInput(
                f"method.type: '{self.name}' cannot train this base model: {exc}",
                field="method.type",
            ) from None
        return get_peft_model(model, config)

    def reserved_positions(self, options: PrefixTuningMethod, config: Any) -> int:
        """With a prefix as past key/values, BERT-like models number the input's positions from
        num_virtual_tokens on, so the input gets what the position embeddings leave."""
        positions = getattr(config, "max_position_embeddings", None)
        tokens = options.num_virtual_tokens
        if isinstance(positions, int) and positions - tokens < MIN_INPUT_TOKENS:
            raise InvalidInput(
                f"method.num_virtual_tokens: {tokens} virtual tokens leave fewer than "
                f"{MIN_INPUT_TOKENS} of the base model's {positions} positions for the input",
                field="method.num_virtual_tokens",
            )
        return tokens
