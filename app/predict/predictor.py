"""Load a registered model for serving, and run a task's predict on it."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from app.core.config import Settings
from app.core.errors import Unavailable
from app.core.store import NotInStore, get_store
from app.db.models import Model
from app.ml import device as devices
from app.ml.lineage import load_base_model, resolve_recorded_base
from app.ml.loading import load_model, quiet_transformers, read_model_metadata
from app.ml.quantize import INT8_DYNAMIC, load_int8_dynamic
from app.ml.tasks import TaskSpec, get_task
from app.predict.batcher import BatchedModel, Batcher, BatchOutput, ModelRunner
from app.predict.shared import AdapterRouting, ReadWriteLock, SharedBases, tensor_bytes
from app.predict.tokenizers import TOKENIZERS, serialized

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
    # Bytes this predictor holds on its own (an adapter on a shared base: the adapter's).
    weight_bytes: int = 0
    runner: ModelRunner | None = None
    # The adapter of a shared base that answers for this model (None: a model of its own).
    adapter: str | None = None
    # Called once, when the cache has dropped this predictor and no request still uses it.
    release: Callable[[], None] | None = None
    _users: int = field(default=0, repr=False)
    _closing: bool = field(default=False, repr=False)
    _state: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        # Request threads share the tokenizer (with each other, and with other models whose
        # tokenizer files are the same): its calls run one at a time, whoever built this.
        self.tokenizer = serialized(self.tokenizer)

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
            if self.adapter is not None and self.runner is not None:
                model = _DirectAdapterModel(self.runner, self.adapter)
        with self._state:
            self._users += 1
        try:
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
        finally:
            with self._state:
                self._users -= 1
                last = self._closing and self._users == 0
            if last:
                self._release()

    def close(self) -> None:
        """The cache dropped this predictor: free what it holds once no request uses it."""
        with self._state:
            self._closing = True
            idle = self._users == 0
        if idle:
            self._release()

    def _release(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()


class _DirectAdapterModel:
    """A shared base's adapter called in the caller's thread (serving without the batcher)."""

    def __init__(self, runner: ModelRunner, adapter: str) -> None:
        self._runner = runner
        self._adapter = adapter

    def __call__(self, **inputs: torch.Tensor) -> BatchOutput:
        rows = next(iter(inputs.values())).shape[0]
        return BatchOutput(self._runner.forward(dict(inputs), [self._adapter] * rows))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner.module, name)


def _load_adapter_model(
    settings: Settings, task: TaskSpec, path: Path, meta: dict[str, Any], labels: list[str]
) -> torch.nn.Module:
    from peft import PeftModel

    from app.ml.prefix import accept_prefix

    # A catalog base, or a registered model ("model:<id>") rebuilt from its lineage.
    base = resolve_recorded_base(settings, meta)
    model = load_base_model(task, base, label_names=labels)
    # The head's trained weights come with the adapter (modules_to_save).
    peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    if peft_model.active_peft_config.is_prompt_learning:
        # A prefix is extra keys and values, not a change of weights: it stays a PeftModel,
        # whose forward feeds the prefix to every layer.
        accept_prefix(peft_model.get_base_model())
        unmerged: torch.nn.Module = peft_model
        return unmerged
    # Folding the adapters into the base weights makes inference as fast as a full model.
    merged: torch.nn.Module = peft_model.merge_and_unload()
    return merged


# peft adapter types whose adapters share a base and mix in one batch (`adapter_names`).
SHAREABLE_ADAPTERS = frozenset({"lora"})
# Each load of a shared adapter gets its own name, so a predictor being dropped (whose adapter
# goes once its last request is answered) never removes the adapter of the one replacing it.
_load_numbers = itertools.count(1)


def _pad_values(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    return {
        "input_ids": int(tokenizer.pad_token_id or 0),
        "token_type_ids": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
    }


def shared_runner(
    group: Any,
    label: str,
    task: TaskSpec,
    tokenizer: PreTrainedTokenizerBase,
    peft_model: Any,
    lock: ReadWriteLock,
    routing: AdapterRouting,
) -> ModelRunner:
    """How model threads run a shared base: rows of any of its adapters in one forward, and
    forwards of several threads at once (the rows' adapters are per thread)."""

    def forward(batch: dict[str, torch.Tensor], adapters: list[str | None]) -> Any:
        names = [a if a is not None else "__base__" for a in adapters]
        with lock.reading(), routing.rows(names):
            return peft_model(**batch)

    return ModelRunner(
        module=peft_model,
        group=("shared", group),
        label=label,
        sequence_outputs=task.per_token_outputs,
        pad_values=_pad_values(tokenizer),
        forward=forward,
        mixed_adapters=True,
    )


def plain_runner(
    label: str, task: TaskSpec, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase
) -> ModelRunner:
    """How the model thread runs a model of its own (no weights shared with another)."""
    return ModelRunner(
        module=model,
        group=("model", id(model)),
        label=label,
        sequence_outputs=task.per_token_outputs,
        pad_values=_pad_values(tokenizer),
        forward=lambda batch, _adapters: model(**batch),
    )


def _load_shared_adapter(
    settings: Settings,
    shared: SharedBases,
    model_row: Model,
    task: TaskSpec,
    path: Path,
    meta: dict[str, Any],
    labels: list[str],
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[Any, ModelRunner, str, int, Callable[[], None]]:
    """A LoRA model as a named adapter of its base's shared copy."""
    base_id = str(meta["base_model"]["id"])
    # Adapters of one base share it when their heads have the same shape.
    key = (task.name, base_id, len(labels))
    label = f"{base_id} ({task.name}, {len(labels)} labels)"

    def load_base() -> torch.nn.Module:
        base = resolve_recorded_base(settings, meta)
        model: Any = load_base_model(task, base, label_names=labels)
        model.eval()
        moved: torch.nn.Module = model.to(devices.select_device())
        return moved

    adapter = f"{model_row.id}#{next(_load_numbers)}"
    base, added = shared.attach(
        key,
        label=label,
        adapter=adapter,
        path=path,
        load_base=load_base,
        make_runner=lambda peft_model, lock, routing: shared_runner(
            key, label, task, tokenizer, peft_model, lock, routing
        ),
    )
    return base.peft_model, base.runner, adapter, added, lambda: shared.detach(base, adapter)


def load_predictor(
    settings: Settings, model_row: Model, *, shared: SharedBases | None = None
) -> Predictor:
    """Load a registered model for inference, as its artifact says: a model directory (full or
    merged at registration), or an adapter applied to its base model."""
    quiet_transformers()
    try:
        path = get_store(settings).local(model_row.storage_path)
        meta = read_model_metadata(path)
    except (OSError, ValueError, NotInStore) as exc:
        raise Unavailable(
            f"model '{model_row.id}' has no readable files on this server", model=model_row.id
        ) from exc
    task = get_task(model_row.task)
    labels = list(meta.get("label_names") or model_row.label_names)
    threads = devices.thread_count(settings.inference_threads)
    devices.set_torch_threads(threads)
    max_length = int(meta.get("max_length") or 512)
    tokenizer = TOKENIZERS.get(path)
    method = str((meta.get("method") or {}).get("type", model_row.method))
    common: dict[str, Any] = {
        "model_id": model_row.id,
        "task": task,
        "tokenizer": tokenizer,
        "label_names": labels,
        "max_length": max_length,
        "threads": threads,
        "options": task.options_model.model_validate(meta.get("task_options") or {}),
    }
    if shared is not None and model_row.artifact == "adapter" and method in SHAREABLE_ADAPTERS:
        peft_model, runner, adapter, added, release = _load_shared_adapter(
            settings, shared, model_row, task, path, meta, labels, tokenizer
        )
        return Predictor(
            model=peft_model,
            weight_bytes=added,
            runner=runner,
            adapter=adapter,
            release=release,
            **common,
        )
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
    return Predictor(
        model=model,
        weight_bytes=tensor_bytes(model),
        runner=plain_runner(model_row.id, task, model, tokenizer),
        **common,
    )
