"""Load a registered model for serving, and run a task's predict on it."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from app.ml.methods import METHODS
from app.ml.methods.base import ADAPTER
from app.ml.quantize import INT8_DYNAMIC, load_int8_dynamic
from app.ml.runtimes import ONNX, ONNX_INT8, runtime_of
from app.ml.tasks import TaskSpec, get_task
from app.ml.tasks.base import Encoded
from app.predict.batcher import Batcher
from app.predict.runtime import Forward, ModelRunner, RowOutputs, run_rows, torch_forward
from app.predict.shared import AdapterRouting, ReadWriteLock, SharedBases, tensor_bytes
from app.predict.tokenizers import TOKENIZERS, SerializedTokenizer, serialized
from app.predict.traced import traced_forward

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

# Rows per forward and padded tokens per forward when a predictor runs without the batcher.
DEFAULT_BATCH_SIZE = 32
DEFAULT_BATCH_TOKENS = 8192


@dataclass
class Predictor:
    """A loaded model, its tokenizer and labels: the task's preprocess and postprocess around the
    runner's forward. Without a batcher, callers serialize calls to predict."""

    model_id: str
    task: TaskSpec
    # The torch module the runner runs (None for an ONNX Runtime session).
    model: Any
    tokenizer: PreTrainedTokenizerBase
    label_names: list[str]
    max_length: int
    threads: int
    options: BaseModel
    runner: ModelRunner
    batch_size: int = DEFAULT_BATCH_SIZE
    # Bytes this predictor holds on its own (an adapter on a shared base: the adapter's).
    weight_bytes: int = 0
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

    @property
    def runtime(self) -> str:
        return self.runner.runtime

    def predict(self, request: BaseModel, *, batcher: Batcher | None = None) -> list[Any]:
        """One result per input of a validated predict request, in input order.

        With a batcher, the rows join other requests' in the model threads; without one, the
        caller runs the forwards itself (and must serialize calls).
        """
        with self._in_use():
            encoded = self._encode(request)
            if batcher is not None:
                outputs = batcher.submit(self.runner, encoded.rows, self.adapter)
            else:
                # set_num_threads also sets the OpenMP team of the calling (threadpool) thread.
                devices.set_torch_threads(self.threads)
                outputs = run_rows(
                    self.runner,
                    encoded.rows,
                    [self.adapter] * len(encoded.rows),
                    max_tokens=DEFAULT_BATCH_TOKENS,
                    max_rows=self.batch_size,
                )
            return self._postprocess(request, encoded, outputs)

    async def predict_async(self, request: BaseModel, *, batcher: Batcher) -> list[Any]:
        """As `predict` with a batcher, on the event loop: the task's preprocess and postprocess
        run in the caller's thread (keep the request small), the forward in a model thread."""
        with self._in_use():
            encoded = self._encode(request)
            outputs = await batcher.submit_async(self.runner, encoded.rows, self.adapter)
            return self._postprocess(request, encoded, outputs)

    def tokenizer_busy(self) -> bool:
        """Whether another thread is in a call of this model's tokenizer right now."""
        tokenizer = self.tokenizer
        return isinstance(tokenizer, SerializedTokenizer) and tokenizer.busy()

    def _encode(self, request: BaseModel) -> Encoded:
        return self.task.encode_inputs(
            self.tokenizer, request, max_length=self.max_length, options=self.options
        )

    def _postprocess(
        self, request: BaseModel, encoded: Encoded, outputs: list[RowOutputs]
    ) -> list[Any]:
        return self.task.postprocess(
            request, encoded, outputs, label_names=self.label_names, options=self.options
        )

    @contextmanager
    def _in_use(self) -> Iterator[None]:
        with self._state:
            self._users += 1
        try:
            yield
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

    def call(batch: dict[str, torch.Tensor], adapters: list[str | None]) -> Any:
        names = [a if a is not None else "__base__" for a in adapters]
        with lock.reading(), routing.rows(names):
            return peft_model(**batch)

    return ModelRunner(
        group=("shared", group),
        label=label,
        runtime="torch",
        sequence_outputs=task.per_token_outputs,
        pad_values=_pad_values(tokenizer),
        forward=torch_forward(peft_model, call=call),
        mixed_adapters=True,
    )


def plain_runner(
    label: str,
    task: TaskSpec,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    runtime: str = "torch",
    forward: Forward | None = None,
) -> ModelRunner:
    """How the model thread runs a torch model of its own (no weights shared with another):
    `forward` (e.g. its TorchScript trace's), or the model itself."""
    return ModelRunner(
        group=("model", id(model)),
        label=label,
        runtime=runtime,
        sequence_outputs=task.per_token_outputs,
        pad_values=_pad_values(tokenizer),
        forward=forward or torch_forward(model, call=lambda batch, _adapters: model(**batch)),
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


def served_settings(task: TaskSpec, meta: dict[str, Any]) -> tuple[int, BaseModel]:
    """How a model is served, from its tuneserve.json: the longest input (512 where none is
    recorded) and its task options."""
    max_length = int(meta.get("max_length") or 512)
    return max_length, task.options_model.model_validate(meta.get("task_options") or {})


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
    max_length, options = served_settings(task, meta)
    tokenizer = TOKENIZERS.get(path)
    method = str((meta.get("method") or {}).get("type", model_row.method))
    common: dict[str, Any] = {
        "model_id": model_row.id,
        "task": task,
        "tokenizer": tokenizer,
        "label_names": labels,
        "max_length": max_length,
        "threads": threads,
        "options": options,
    }
    if shared is not None and model_row.artifact == ADAPTER and _shares_base(method):
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
    loader = LOADERS.get(model_row.artifact, _load_full)
    loaded = loader(ArtifactFiles(settings, model_row, task, path, meta, labels, tokenizer))
    return Predictor(
        model=loaded.model,
        weight_bytes=loaded.weight_bytes,
        runner=loaded.runner,
        **common,
    )


def _shares_base(method: str) -> bool:
    """Whether adapters of the method share their base's copy, mixed in one batch (peft's
    `adapter_names`), as the method's spec says."""
    spec = METHODS.get(method)
    return spec is not None and spec.shares_base


@dataclass
class ArtifactFiles:
    """What a loader reads: the model's row and local files, its task, labels and tokenizer."""

    settings: Settings
    row: Model
    task: TaskSpec
    path: Path
    meta: dict[str, Any]
    labels: list[str]
    tokenizer: PreTrainedTokenizerBase


@dataclass
class Loaded:
    model: Any
    runner: ModelRunner
    weight_bytes: int


def _torch_loaded(files: ArtifactFiles, model: torch.nn.Module, runtime: str) -> Loaded:
    model.eval()
    forward = None
    if runtime == "torch":  # int8 kernels run on the CPU, eagerly
        model.to(devices.select_device())
        forward = traced_forward(model, files.tokenizer)
    runner = plain_runner(
        files.row.id, files.task, model, files.tokenizer, runtime=runtime, forward=forward
    )
    return Loaded(model, runner, tensor_bytes(model))


def _load_full(files: ArtifactFiles) -> Loaded:
    return _torch_loaded(files, load_model(files.task, files.path), "torch")


def _load_adapter(files: ArtifactFiles) -> Loaded:
    model = _load_adapter_model(files.settings, files.task, files.path, files.meta, files.labels)
    return _torch_loaded(files, model, "torch")


def _load_int8_dynamic(files: ArtifactFiles) -> Loaded:
    # The parent's weights quantized again (no weights of its own).
    model = load_int8_dynamic(files.settings, files.task, files.meta, files.labels)
    return _torch_loaded(files, model, "torch_int8")


def _load_onnx(files: ArtifactFiles) -> Loaded:
    from app.predict.onnx import onnx_runner

    runner, size = onnx_runner(
        files.path,
        label=files.row.id,
        task=files.task,
        pad_values=_pad_values(files.tokenizer),
        runtime=runtime_of(files.row.artifact),
        threads=devices.thread_count(files.settings.inference_threads),
    )
    return Loaded(None, runner, size)


# How each artifact kind (Models.artifact) is loaded and which runtime runs it; a new runtime
# is a loader and a line here (and its name in app/ml/runtimes.py).
LOADERS: dict[str, Callable[[ArtifactFiles], Loaded]] = {
    "full": _load_full,
    "adapter": _load_adapter,
    INT8_DYNAMIC: _load_int8_dynamic,
    ONNX: _load_onnx,
    ONNX_INT8: _load_onnx,
}
