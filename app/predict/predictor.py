"""Load a registered model for serving, and run a task's predict on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from app.core.config import Settings
from app.core.errors import Unavailable
from app.core.storage import resolve
from app.db.models import Model
from app.ml import device as devices
from app.ml.lineage import load_base_model, resolve_recorded_base
from app.ml.loading import load_model, load_tokenizer, quiet_transformers, read_model_metadata
from app.ml.quantize import INT8_DYNAMIC, load_int8_dynamic
from app.ml.tasks import TaskSpec, get_task
from app.predict.batcher import BatchedModel, Batcher, ModelRunner

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

DEFAULT_BATCH_SIZE = 32


@dataclass
class Predictor:
    """A model in eval mode with its tokenizer and labels. Callers serialize calls to predict."""

    model_id: str
    task: TaskSpec
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    label_names: list[str]
    max_length: int
    threads: int
    options: BaseModel
    batch_size: int = DEFAULT_BATCH_SIZE
    weight_bytes: int = 0
    runner: ModelRunner | None = None
    adapter: str | None = None

    def predict(self, request: BaseModel, *, batcher: Batcher | None = None) -> list[Any]:
        """One result per input of a validated predict request, in input order.

        With a batcher, the task's model calls join other requests' in the model thread;
        without one, the caller runs the model itself (and must serialize calls).
        """
        import torch

        model: Any = self.model
        if batcher is not None and self.runner is not None:
            model = BatchedModel(batcher, self.runner, self.adapter)
        else:
            # set_num_threads also sets the OpenMP team of the calling (threadpool) thread.
            devices.set_torch_threads(self.threads)
        with torch.inference_mode():
            return self.task.predict(
                model,
                self.tokenizer,
                request,
                label_names=self.label_names,
                max_length=self.max_length,
                batch_size=self.batch_size,
                options=self.options,
            )


def _load_adapter_model(
    settings: Settings, task: TaskSpec, path: Path, meta: dict[str, Any], labels: list[str]
) -> torch.nn.Module:
    from peft import PeftModel

    # A catalog base, or a registered model ("model:<id>") rebuilt from its lineage.
    base = resolve_recorded_base(settings, meta)
    model = load_base_model(task, base, label_names=labels)
    # The head's trained weights come with the adapter (modules_to_save).
    peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    if peft_model.active_peft_config.is_prompt_learning:
        # A prefix is extra keys and values, not a change of weights: it stays a PeftModel,
        # whose forward feeds the prefix to every layer.
        unmerged: torch.nn.Module = peft_model
        return unmerged
    # Folding the adapters into the base weights makes inference as fast as a full model.
    merged: torch.nn.Module = peft_model.merge_and_unload()
    return merged


def plain_runner(
    label: str, task: TaskSpec, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase
) -> ModelRunner:
    """How the model thread runs a model of its own (no weights shared with another)."""
    return ModelRunner(
        module=model,
        group=("model", id(model)),
        label=label,
        # Token classification and QA answer per token; classification per input.
        sequence_outputs=task.auto_model_class_name != "AutoModelForSequenceClassification",
        pad_values={
            "input_ids": int(tokenizer.pad_token_id or 0),
            "token_type_ids": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        },
        forward=lambda batch, _adapters: model(**batch),
    )


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes held by a model's parameters and buffers (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def load_predictor(settings: Settings, model_row: Model) -> Predictor:
    """Load a registered model for inference, as its artifact says: a model directory (full or
    merged at registration), or an adapter applied to its base model."""
    quiet_transformers()
    path = resolve(settings, model_row.storage_path)
    try:
        meta = read_model_metadata(path)
    except (OSError, ValueError) as exc:
        raise Unavailable(
            f"model '{model_row.id}' has no readable files on this server", model=model_row.id
        ) from exc
    task = get_task(model_row.task)
    labels = list(meta.get("label_names") or model_row.label_names)
    threads = devices.thread_count(settings.inference_threads)
    devices.set_torch_threads(threads)
    if model_row.artifact == "adapter":
        model = _load_adapter_model(settings, task, path, meta, labels)
    elif model_row.artifact == INT8_DYNAMIC:
        # The parent's weights quantized again (no weights of its own); int8 kernels run on CPU.
        model = load_int8_dynamic(settings, task, meta, labels)
    else:
        model = load_model(task, path)
    model.eval()
    if model_row.artifact != INT8_DYNAMIC:
        model.to(devices.select_device())
    tokenizer = load_tokenizer(path)
    return Predictor(
        model_id=model_row.id,
        task=task,
        model=model,
        tokenizer=tokenizer,
        label_names=labels,
        max_length=int(meta.get("max_length") or 512),
        threads=threads,
        options=task.options_model.model_validate(meta.get("task_options") or {}),
        weight_bytes=weight_bytes(model),
        runner=plain_runner(model_row.id, task, model, tokenizer),
    )
