"""Continued training: a job whose base_model is a registered model ("model:<id>").

The parent must be the tenant's own and of the job's task; the child keeps its labels in their
order (so a classifier's head goes on training rather than starting again), and its datasets may
only use those labels.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.basemodel.schemas import ResolvedBaseModel
from app.core.config import Settings
from app.core.errors import InvalidInput, Unavailable
from app.db.models import Dataset, Model
from app.db.session import get_by_id
from app.ml.lineage import parent_id, resolve_model_base
from app.ml.quantize import QUANTIZED_ARTIFACTS
from app.ml.runtimes import ONNX_ARTIFACTS

# Labels named in an error message, at most.
SHOWN_LABELS = 20


def resolve_job_base(
    session: Session, *, settings: Settings, tenant: str, task: str, base_model: str
) -> ResolvedBaseModel:
    """A job's base: a catalog id, or a registered model of the tenant and task; InvalidInput
    naming base_model otherwise."""
    from app.basemodel.service import resolve_base_model

    model_id = parent_id(base_model)
    if model_id is None:
        return resolve_base_model(settings, base_model)
    parent = get_by_id(session, Model, model_id)
    if parent is None or parent.tenant_id != tenant:
        # Another tenant's model answers as a missing one: ids do not leak across tenants.
        raise InvalidInput(
            f"unknown base_model '{base_model}': no registered model '{model_id}'",
            field="base_model",
        )
    if parent.task != task:
        raise InvalidInput(
            f"base_model '{base_model}' is a '{parent.task}' model; a '{task}' job cannot "
            "continue it",
            field="base_model",
        )
    if parent.artifact in QUANTIZED_ARTIFACTS:
        # Its weights are its parent's, quantized at load: nothing to train on or quantize again.
        raise InvalidInput(
            f"base_model '{base_model}' is an {parent.artifact} quantization of "
            f"'model:{parent.parent_model_id}': it can be neither trained nor quantized again; "
            f"use base_model 'model:{parent.parent_model_id}'",
            field="base_model",
        )
    if parent.artifact in ONNX_ARTIFACTS:
        # A graph for ONNX Runtime: no torch weights to train, quantize or export again.
        raise InvalidInput(
            f"base_model '{base_model}' is an {parent.artifact} export of "
            f"'model:{parent.parent_model_id}': it can be neither trained, quantized nor "
            f"exported again; use base_model 'model:{parent.parent_model_id}'",
            field="base_model",
        )
    try:
        return resolve_model_base(settings, model_id=parent.id, storage_path=parent.storage_path)
    except Unavailable as exc:
        raise InvalidInput(
            f"base_model '{base_model}': {exc.message}", field="base_model"
        ) from None


def check_parent_labels(
    base: ResolvedBaseModel, *, train: Dataset, validation: Dataset | None
) -> None:
    """The datasets of a continued model may only use its parent's labels (InvalidInput)."""
    if base.lineage is None:
        return
    known = set(base.lineage.label_names)
    for field, ds in (("train_dataset", train), ("validation_dataset", validation)):
        if ds is None:
            continue
        unknown = sorted(set(ds.label_names or ()) - known)
        if unknown:
            raise InvalidInput(
                f"{field}: dataset '{ds.id}' has labels that base_model '{base.id}' "
                f"does not know: {unknown[:SHOWN_LABELS]}; a continued model keeps its "
                "parent's labels",
                field=field,
                labels=unknown[:1000],
            )


def continued_labels(base: ResolvedBaseModel, found: Sequence[str]) -> list[str]:
    """The labels a job trains with: the ones found in its data, or for a continued model its
    parent's, in the parent's order (InvalidInput when the data has others)."""
    if base.lineage is None:
        return list(found)
    known = base.lineage.label_names
    unknown = [label for label in found if label not in known]
    if unknown:
        raise InvalidInput(
            f"train_dataset has labels that base_model '{base.id}' does not know: "
            f"{unknown[:SHOWN_LABELS]}",
            field="train_dataset",
            labels=unknown[:1000],
        )
    return list(known)
