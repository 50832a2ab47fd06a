"""Registered models as bases (`base_model: "model:<id>"`): rebuilt from their files.

A model with full weights (method full or head_only, or an adapter merged at registration) loads
from its own directory. An adapter is merged into its base, which may itself be a registered
model: the chain of directories is walked up to the first with full weights, or to the catalog
base at the root, and the adapters are merged in again oldest first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.basemodel.schemas import BaseModelSource, ModelLineage, ResolvedBaseModel
from app.core.config import Settings
from app.core.errors import Unavailable
from app.core.store import NotInStore, get_store
from app.ml.loading import load_model, load_model_for_training, read_model_metadata

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from app.ml.tasks import TaskSpec

MODEL_PREFIX = "model:"
# Directories read to rebuild one base, that is adapters in a row (a model with full weights ends
# the walk). Each adapter is one more merge at every load; a deeper lineage is refused.
MAX_LINEAGE_DEPTH = 8
# peft methods that add virtual tokens rather than change weights: nothing can be merged.
PROMPT_LEARNING = frozenset(
    {"PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING", "ADAPTION_PROMPT"}
)


def parent_id(base_model: str) -> str | None:
    """The registered model a job's base_model names ("model:<id>"), or None for a catalog id."""
    if base_model.startswith(MODEL_PREFIX):
        return base_model[len(MODEL_PREFIX) :]
    return None


def holds_full_weights(path: Path) -> bool:
    """A model directory that from_pretrained loads by itself (an adapter has no config.json)."""
    return (path / "config.json").is_file()


def _unavailable(message: str, model_id: str) -> Unavailable:
    return Unavailable(message, code="parent_model_unavailable", model=model_id)


def _which(model_id: str, wanted: str) -> str:
    """'model X' or 'model X, in the lineage of model:Y', for messages."""
    if wanted == f"{MODEL_PREFIX}{model_id}":
        return f"model '{model_id}'"
    return f"model '{model_id}', in the lineage of '{wanted}',"


def _model_dir(settings: Settings, model_id: str, storage_path: str, wanted: str) -> Path:
    try:
        return get_store(settings).local(storage_path)
    except (NotInStore, ValueError):
        raise _unavailable(
            f"{_which(model_id, wanted)} has no files in the store", model_id
        ) from None


def _metadata(path: Path, model_id: str, wanted: str) -> dict[str, Any]:
    try:
        return read_model_metadata(path)
    except (OSError, ValueError) as exc:
        raise _unavailable(
            f"{_which(model_id, wanted)} has no readable files on this server", model_id
        ) from exc


def _check_mergeable(path: Path, model_id: str, wanted: str) -> None:
    try:
        peft_type = json.loads((path / "adapter_config.json").read_text()).get("peft_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise _unavailable(
            f"{_which(model_id, wanted)} has no readable adapter on this server", model_id
        ) from exc
    if peft_type in PROMPT_LEARNING:
        raise _unavailable(
            f"{_which(model_id, wanted)} is a {peft_type} adapter: it adds virtual tokens, "
            "which cannot be merged into weights to train on or to quantize",
            model_id,
        )


def _layers(path: str) -> tuple[str | None, int | None]:
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None, None
    layers = config.get("num_hidden_layers") if isinstance(config, dict) else None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    return model_type, layers if isinstance(layers, int) else None


def resolve_model_base(
    settings: Settings, *, model_id: str, storage_path: str
) -> ResolvedBaseModel:
    """Registered model `model_id` as a base: where its weights start and which adapters merge in.

    Unavailable when a directory of its lineage is gone, or the lineage is too deep.
    """
    from app.basemodel.service import resolve_base_model

    wanted = f"{MODEL_PREFIX}{model_id}"
    first: dict[str, Any] | None = None
    adapters: list[str] = []
    current, relative = model_id, storage_path
    for _ in range(MAX_LINEAGE_DEPTH):
        path = _model_dir(settings, current, relative, wanted)
        meta = _metadata(path, current, wanted)
        first = first or meta
        base: dict[str, Any] = meta.get("base_model") or {}
        root_id = str(base.get("root") or base.get("id"))
        if holds_full_weights(path):
            weights = str(path)
            break
        _check_mergeable(path, current, wanted)
        adapters.append(str(path))
        parent = base.get("parent")
        if parent is None:  # an adapter of a catalog base: the root
            weights = resolve_base_model(settings, str(base.get("id"))).path_or_hub_id
            break
        try:
            current, relative = str(parent["id"]), str(parent["storage_path"])
        except (KeyError, TypeError):
            raise _unavailable(
                f"{_which(current, wanted)} does not say where its parent is", current
            ) from None
    else:
        raise _unavailable(
            f"the lineage of '{wanted}' has more than {MAX_LINEAGE_DEPTH} adapters in a row; "
            "continue from a model with full weights instead",
            model_id,
        )
    assert first is not None
    model_type, layers = _layers(weights)
    lineage = ModelLineage(
        parent_id=model_id,
        parent_storage_path=storage_path,
        root_id=root_id,
        adapters=tuple(reversed(adapters)),
        label_names=tuple(first.get("label_names") or ()),
        head_weights=tuple(first.get("head_weights") or ()),
    )
    return ResolvedBaseModel(wanted, BaseModelSource.MODEL, weights, model_type, layers, lineage)


def resolve_recorded_base(settings: Settings, meta: dict[str, Any]) -> ResolvedBaseModel:
    """The base of a trained model, from its metadata: a catalog id, or its parent rebuilt."""
    from app.basemodel.service import resolve_base_model

    base: dict[str, Any] = meta["base_model"]
    parent = base.get("parent")
    if parent is None:
        return resolve_base_model(settings, str(base["id"]))
    try:
        return resolve_model_base(
            settings, model_id=str(parent["id"]), storage_path=str(parent["storage_path"])
        )
    except Unavailable as exc:
        raise Unavailable(
            f"model '{meta.get('model_id')}' cannot be loaded: {exc.message}",
            code=exc.code,
            **exc.details,
        ) from exc


def base_metadata(base: ResolvedBaseModel) -> dict[str, Any]:
    """The `base_model` entry of a trained model's metadata: enough to rebuild its base."""
    entry: dict[str, Any] = {
        "id": base.id,
        "source": base.source,
        "model_type": base.model_type,
        "root": base.root_id,
    }
    if base.lineage is not None:
        entry["parent"] = {
            "id": base.lineage.parent_id,
            "storage_path": base.lineage.parent_storage_path,
        }
    return entry


def merge_adapters(model: Any, adapters: Sequence[str]) -> Any:
    """`model` with each adapter directory merged into its weights, in order."""
    from peft import PeftModel

    for path in adapters:
        # The adapter's modules_to_save (the head trained with it) replace the model's own.
        model = PeftModel.from_pretrained(model, path, is_trainable=False).merge_and_unload()
    return model


def load_base_model(
    task: TaskSpec, base: ResolvedBaseModel, *, label_names: Sequence[str]
) -> PreTrainedModel:
    """A base for an adapter to be applied to, for inference: rebuilt when it is a model."""
    model = load_model(task, base.path_or_hub_id, label_names=label_names)
    if base.lineage is not None:
        model = merge_adapters(model, base.lineage.adapters)
        model.eval()
    return model


def head_weights(model: Any) -> list[str]:
    """The task head's weights when nobody recorded them: those outside the base architecture
    (`classifier.*` beside `bert.*`), which is what a fresh load from the root base would make."""
    prefix = f"{model.base_model_prefix}."
    return sorted(name for name, _ in model.named_parameters() if not name.startswith(prefix))


def load_starting_model(
    task: TaskSpec, base: ResolvedBaseModel, *, label_names: Sequence[str]
) -> tuple[PreTrainedModel, list[str]]:
    """The weights a job starts from, and the names of the task head's weights (they train in
    full, or go in an adapter's modules_to_save).

    A catalog base gets a fresh head: its weights are the ones the checkpoint lacked. A registered
    model keeps its trained head and labels; its head is the one its lineage recorded.
    """
    model, new_weights = load_model_for_training(task, base.path_or_hub_id, label_names=label_names)
    if base.lineage is None:
        return model, new_weights
    model = merge_adapters(model, base.lineage.adapters)
    for param in model.parameters():  # peft froze the base while merging; the method decides
        param.requires_grad_(True)
    # Rebuilt from the root, the fresh head's weights are the head (the adapters restored it).
    head = new_weights or list(base.lineage.head_weights) or head_weights(model)
    return model, head
