"""Load tokenizers and models: offline, safetensors only, never remote code."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.ml.pooling import POOLING_KEY, configured_pooling, mean_pooled_class

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from app.ml.tasks import TaskSpec

log = logging.getLogger("tuneserve.loading")

# Beside the weights of every trained model: task, labels, base model, method, metrics, hashes.
METADATA_FILE = "tuneserve.json"

# Passed to every from_pretrained: read only what is on disk, run no code shipped with a model.
SAFE_LOAD: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True}


def quiet_transformers() -> None:
    """No progress bars or load reports in service logs."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    # peft calls a transformers property that transformers 5 deprecated; nothing for us to do.
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )
    # Two false alarms of peft about AdaLoRA: a matrix pruned to rank 0 taken for an ungathered
    # DeepSpeed shard, and AdaLoRA's rank pattern (by lora_E weight) read as LoRA's (by module).
    warnings.filterwarnings("ignore", message=".*LoRA tensor\\(s\\) have invalid shape.*")
    warnings.filterwarnings("ignore", message=".*rank_pattern keys did not match any targeted.*")


def auto_model_class(task: TaskSpec) -> Any:
    """The transformers Auto class the task names (AutoModelForSequenceClassification...)."""
    import transformers

    cls = getattr(transformers, task.auto_model_class_name, None)
    if cls is None:
        raise RuntimeError(f"transformers has no class {task.auto_model_class_name}")
    return cls


def model_class(task: TaskSpec, path: str | Path, *, pooling: str | None = None) -> Any:
    """The class that builds the task's model from `path`: the task's Auto class, or for one vector
    per input pooled as the mean of its tokens (`pooling`, else the directory's config.json; see
    app/ml/pooling.py) the architecture's mean-pooled classifier."""
    cls = auto_model_class(task)
    if task.per_token_outputs or (pooling or configured_pooling(path)) != "mean":
        return cls
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), **SAFE_LOAD)
    return mean_pooled_class(cls._model_mapping[type(config)])


def label_kwargs(label_names: Sequence[str]) -> dict[str, Any]:
    """Config overrides that give the head one output per label, with names in config.json."""
    if not label_names:
        return {}
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a model directory."""
    from transformers import AutoTokenizer

    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(path), **SAFE_LOAD)
    return tokenizer


def load_model_for_training(
    task: TaskSpec, path: str | Path, *, label_names: Sequence[str], pooling: str | None = None
) -> tuple[PreTrainedModel, list[str]]:
    """A base model with a fresh task head, in fp32; also the names of the newly made weights.
    `pooling` "mean" builds a head over the mean of the token vectors (app/ml/pooling.py), "cls"
    the architecture's own head, either recorded in the model's config; None: what the
    directory's config records."""
    import torch

    model, info = model_class(task, path, pooling=pooling).from_pretrained(
        str(path),
        use_safetensors=True,
        dtype=torch.float32,
        output_loading_info=True,
        **label_kwargs(label_names),
        **SAFE_LOAD,
    )
    if pooling is not None and not task.per_token_outputs:
        setattr(model.config, POOLING_KEY, pooling)  # saved in config.json: how to load it
    if info.get("mismatched_keys"):
        log.info("re-initialised mismatched weights: %s", info["mismatched_keys"])
    return model, sorted(set(info.get("missing_keys", ())))


def load_model(
    task: TaskSpec, path: str | Path, *, label_names: Sequence[str] | None = None
) -> PreTrainedModel:
    """A model for inference (fp32, eval mode); label_names overrides the head for adapter bases."""
    import torch

    model: PreTrainedModel = model_class(task, path).from_pretrained(
        str(path),
        use_safetensors=True,
        dtype=torch.float32,
        **label_kwargs(label_names or ()),
        **SAFE_LOAD,
    )
    model.eval()  # type: ignore[no-untyped-call]
    return model


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The tuneserve.json of a trained model directory."""
    data: dict[str, Any] = json.loads((Path(path) / METADATA_FILE).read_text())
    return data
