"""head_only and train_top_layers: what trains, what stays exactly as the base model had it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import InvalidInput
from app.db.models import JobStatus, Model
from worker.jobs import run_job
from worker.training.freezing import freeze, layer_index

HEAD = ["classifier.weight", "classifier.bias"]


def _tiny(tiny_models_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        str(tiny_models_dir / "tiny-bert"), num_labels=2
    )


def _trainable(model) -> set[str]:  # type: ignore[no-untyped-def]
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_layer_index_reads_common_layouts() -> None:
    assert layer_index("bert.encoder.layer.5.attention.self.query.weight") == 5
    assert layer_index("model.layers.11.mlp.up_proj.weight") == 11
    assert layer_index("transformer.h.3.attn.c_attn.weight") == 3
    assert layer_index("bert.embeddings.word_embeddings.weight") is None
    assert layer_index("classifier.weight") is None


def test_head_only_trains_the_head_and_the_pooler(tiny_models_dir: Path) -> None:
    model = _tiny(tiny_models_dir)
    freeze(model, new_weights=HEAD, top_layers=None)
    pooler = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    assert _trainable(model) == set(HEAD) | pooler


def test_top_layers_train_with_the_head_and_pooler(tiny_models_dir: Path) -> None:
    model = _tiny(tiny_models_dir)
    freeze(model, new_weights=HEAD, top_layers=1)
    trainable = _trainable(model)
    assert set(HEAD) <= trainable
    assert any(".layer.1." in n for n in trainable) and any("pooler" in n for n in trainable)
    assert not any(".layer.0." in n or "embeddings" in n for n in trainable)


def test_impossible_freezing_is_refused_naming_the_field(tiny_models_dir: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        freeze(_tiny(tiny_models_dir), new_weights=HEAD, top_layers=3)
    assert (
        err.value.details["field"] == "method.train_top_layers" and "2 layers" in err.value.message
    )
    with pytest.raises(InvalidInput, match="nothing would train"):
        freeze(_tiny(tiny_models_dir), new_weights=[], top_layers=None)


@pytest.mark.parametrize(
    ("method", "frozen", "changed"),
    [
        ({"type": "head_only"}, ("embeddings", ".layer.0.", ".layer.1."), ("classifier",)),
        (
            {"type": "full", "train_top_layers": 1},
            ("embeddings", ".layer.0."),
            (".layer.1.", "classifier"),
        ),
    ],
    ids=["head_only", "top_layers"],
)
def test_trained_model_keeps_frozen_weights_exactly(
    train_settings,
    tiny_models_dir: Path,
    db: Session,
    add_job: Callable[..., str],
    method: dict[str, object],
    frozen: tuple[str, ...],
    changed: tuple[str, ...],
) -> None:
    from transformers import AutoModelForSequenceClassification

    job_id = add_job(method=method, epochs=2, learning_rate=1e-2)
    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
    row = db.scalars(select(Model).where(Model.job_id == job_id)).one()
    assert row.method == method["type"]
    trained = dict(
        AutoModelForSequenceClassification.from_pretrained(
            str(train_settings.data_dir / row.storage_path)
        ).named_parameters()
    )
    base = dict(_tiny(tiny_models_dir).named_parameters())
    for name, value in trained.items():
        if name.startswith("classifier"):
            continue  # new weights: no base value to compare with
        same = torch.equal(value, base[name])
        if any(part in name for part in frozen):
            assert same, f"{name} changed but should be frozen"
        elif any(part in name for part in changed):
            assert not same, f"{name} did not train"
