"""AdaLoRA: its step schedule, the rank reallocation the Trainer does not do by itself, and the
allocator state a resumed job needs (saved with each checkpoint by worker/training/adapters.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from app.core.errors import InvalidInput
from app.ml.methods.adalora import AdaLoraMethod
from worker.training.heads import trained_in_full
from worker.training.methods.adapter import AdapterMethod, peft_task_type, target_modules

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, TrainerControl, TrainerState, TrainingArguments

    from app.ml.tasks import TaskSpec

# The allocator's running importance scores, by parameter name; saved with each checkpoint.
_SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")
# AdaLoRA is wrapped before the job's step count is known ("auto" batch sizes need the wrapped
# model's parameter counts); `schedule` then sets the real one.
PROVISIONAL_STEPS = 1_000_000


def adalora_schedule(method: AdaLoraMethod, total_steps: int) -> tuple[int, int]:
    """(tinit, tfinal) for a job of `total_steps` steps; InvalidInput if they leave no others."""
    tinit = method.tinit if method.tinit is not None else total_steps // 10
    # At least one final step when there are two: the allocation at step total - tfinal is the
    # one that brings the budget down to exactly target_r per matrix.
    default_final = max(1, total_steps // 5) if total_steps > 1 else 0
    tfinal = method.tfinal if method.tfinal is not None else default_final
    if tinit + tfinal >= total_steps:
        raise InvalidInput(
            f"method.tinit: tinit ({tinit}) + tfinal ({tfinal}) must be less than the "
            f"{total_steps} optimizer steps this job trains for, to leave steps in which AdaLoRA "
            "reallocates ranks; lower them or train for longer",
            field="method.tinit",
        )
    return tinit, tfinal


class AdaLoraTraining(AdapterMethod[AdaLoraMethod]):
    name = "adalora"

    def prepare(
        self,
        model: PreTrainedModel,
        *,
        task: TaskSpec,
        options: AdaLoraMethod,
        new_weights: list[str],
    ) -> Any:
        """Wrap the model in AdaLoRA adapters, scheduled provisionally (see `schedule`); the head
        trains in full."""
        return apply_adalora(
            model, task=task, method=options, new_weights=new_weights, total_steps=PROVISIONAL_STEPS
        )

    def schedule(self, model: Any, options: AdaLoraMethod, *, total_steps: int) -> None:
        """Schedule the rank reallocation over the job's `total_steps`."""
        tinit, tfinal = adalora_schedule(options, total_steps)
        # The rank allocator reads this same config object at every step.
        config = model.peft_config["default"]
        config.total_step, config.tinit, config.tfinal = total_steps, tinit, tfinal

    def callbacks(self, model: Any) -> list[TrainerCallback]:
        tuner = allocating_tuner(model)
        return [RankAllocationCallback(tuner)] if tuner is not None else []


def apply_adalora(
    model: PreTrainedModel,
    *,
    task: TaskSpec,
    method: AdaLoraMethod,
    new_weights: list[str],
    total_steps: int,
) -> Any:
    """Wrap the model in AdaLoRA adapters scheduled over `total_steps`; the head trains in full."""
    from peft import AdaLoraConfig, get_peft_model

    tinit, tfinal = adalora_schedule(method, total_steps)
    config = AdaLoraConfig(
        task_type=peft_task_type(task),
        init_r=method.init_r,
        target_r=method.target_r,
        # peft types alpha as int; any positive number works (scaling = alpha / init_r).
        lora_alpha=method.lora_alpha or 2 * method.init_r,  # type: ignore[arg-type]
        lora_dropout=method.lora_dropout,
        target_modules=target_modules(model, method.target_modules),
        modules_to_save=trained_in_full(model, new_weights) or None,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=method.delta_t,
        orth_reg_weight=method.orth_reg_weight,
        total_step=total_steps,
    )
    return get_peft_model(model, config)


def allocating_tuner(model: Any) -> Any | None:
    """The AdaLoraModel inside a peft model that is training AdaLoRA, else None."""
    tuner = getattr(model, "base_model", None)
    return tuner if hasattr(tuner, "rankallocator") else None


class RankAllocationCallback(TrainerCallback):
    """AdaLoRA's budget reallocation, which the Trainer does not do by itself.

    peft's `update_and_allocate` reads the gradients of the adapter matrices, so it must run
    after backward and before zero_grad: the Trainer's on_optimizer_step comes right after
    optimizer.step(), with the gradients still in place (the order of peft's own example loop).
    """

    def __init__(self, tuner: Any) -> None:
        self.tuner = tuner

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # The schedule was built on the runner's count of steps; it must end with training.
        total = self.tuner.peft_config[self.tuner.trainable_adapter_name].total_step
        if state.max_steps != total:
            raise RuntimeError(
                f"AdaLoRA was scheduled over {total} steps, but the Trainer runs {state.max_steps}"
            )

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # global_step still counts the steps before this one: 0 on the first, as in peft's loop.
        self.tuner.update_and_allocate(state.global_step)


def allocator_state(tuner: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The allocator's scores (tensors) and the current rank pattern (metadata) to checkpoint."""
    allocator = tuner.rankallocator
    tensors = {
        f"adalora.{kind}.{name}": value.detach().cpu().contiguous()
        for kind in _SCORES
        for name, value in getattr(allocator, kind).items()
    }
    config = tuner.peft_config[tuner.trainable_adapter_name]
    return tensors, {"adalora.rank_pattern": json.dumps(config.rank_pattern)}


def restore_allocator(tuner: Any, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Put back what allocator_state saved: a resumed job allocates as the straight run would."""
    allocator = tuner.rankallocator
    params = dict(tuner.model.named_parameters())
    for kind in _SCORES:
        prefix = f"adalora.{kind}."
        scores = {
            k[len(prefix) :]: v.to(params[k[len(prefix) :]].device)
            for k, v in tensors.items()
            if k.startswith(prefix)
        }
        setattr(allocator, kind, scores)
    config = tuner.peft_config[tuner.trainable_adapter_name]
    # The pattern of the last allocation: the final steps mask with it.
    config.rank_pattern = json.loads(metadata.get("adalora.rank_pattern", "null"))
