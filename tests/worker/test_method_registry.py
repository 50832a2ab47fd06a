"""The method and job kind registries: both sides agree, and a method or a job kind added in this
one file (its API side and its worker side, one registry line each) is accepted by the API, run
by the worker's code path and served by /predict."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal, get_args

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import Field
from safetensors.torch import load_file

from app.core.store import get_store
from app.db.models import JobStatus, Model
from app.db.session import session_scope
from app.job.kinds import JOB_KINDS, job_kind, method_options
from app.job.kinds.derived import DerivingKind
from app.ml.lineage import parent_id
from app.ml.loading import METADATA_FILE, read_model_metadata
from app.ml.methods import METHODS, MethodOptions, MethodSpec
from app.ml.methods.base import FULL
from tests.predict.conftest import upload_rows
from tests.tinymodel import sentiment_rows
from tests.worker.conftest import TINY_MODEL_ID
from worker.jobs import run_job
from worker.kinds import JOB_RUNNERS
from worker.training.artifacts import WrittenModel, write_model_dir
from worker.training.heads import layer_index, trained_in_full
from worker.training.methods import TRAINING_METHODS, TrainingMethod
from worker.training.state import AttemptFence


def test_every_method_and_job_kind_has_both_sides() -> None:
    assert list(TRAINING_METHODS) == list(METHODS)
    assert list(JOB_RUNNERS) == list(JOB_KINDS)
    for name, method in METHODS.items():
        assert method.name == TRAINING_METHODS[name].name == name
        # The options model's `type` tag is the method's name: the spec names it, nothing else.
        assert get_args(method.options_model.model_fields["type"].annotation) == (name,)
        assert job_kind(name).name == "train"
    for name, kind in JOB_KINDS.items():
        assert kind.name == JOB_RUNNERS[name].name == name
    # No `method.type` belongs to two kinds; quantize and export are kinds of their own.
    per_kind = [list(kind.options_models()) for kind in JOB_KINDS.values()]
    assert sum(map(len, per_kind)) == len(method_options())
    assert (job_kind("quantize").name, job_kind("export").name) == ("quantize", "export")
    assert not job_kind("quantize").trains and job_kind("full").trains


# A method that no peft config knows: the task head (and the pooler above the blocks) trains,
# and of the transformer blocks only the biases of the top `layers` ones.


class TopBiasesMethod(MethodOptions):
    """Only the task head and the biases of the top layers train."""

    type: Literal["top_biases"]
    layers: int = Field(default=1, ge=1, le=64, description="Top layers whose biases train.")


class TopBiases(MethodSpec[TopBiasesMethod]):
    name = "top_biases"
    options_model = TopBiasesMethod
    default_learning_rate = 5e-2


class TopBiasesTraining(TrainingMethod[TopBiasesMethod]):
    name = "top_biases"

    def prepare(
        self, model: Any, *, task: Any, options: TopBiasesMethod, new_weights: list[str]
    ) -> Any:
        heads = tuple(f"{m}." for m in trained_in_full(model, new_weights))
        top = max(i for n, _ in model.named_parameters() if (i := layer_index(n)) is not None)
        for name, param in model.named_parameters():
            index = layer_index(name)
            in_top = index is not None and index > top - options.layers
            param.requires_grad = name.startswith(heads) or (in_top and name.endswith(".bias"))
        return model


@pytest.fixture
def top_biases(monkeypatch: pytest.MonkeyPatch) -> None:
    """The method registered on both sides, one line each."""
    monkeypatch.setitem(METHODS, "top_biases", TopBiases())
    monkeypatch.setitem(TRAINING_METHODS, "top_biases", TopBiasesTraining())


def _changed(base_dir: Path, model_dir: Path) -> set[str]:
    """Names of the trained model's weights that differ from the base model's ("bert." is the
    classification model's prefix for the base's weights; the head is new)."""
    base = load_file(str(base_dir / "model.safetensors"))
    trained = load_file(str(model_dir / "model.safetensors"))
    changed = set()
    for name, tensor in trained.items():
        before = base.get(name.removeprefix("bert."))
        if before is None or not torch.equal(before, tensor):
            changed.add(name)
    return changed


def test_a_method_registered_in_one_file_is_accepted_trained_and_served(
    train_settings: Any, client: TestClient, top_biases: None
) -> None:
    train = upload_rows(client, sentiment_rows(24))
    body: dict[str, Any] = {
        "task": "classification",
        "base_model": TINY_MODEL_ID,
        "train_dataset": train,
        "hyperparameters": {"epochs": 2, "batch_size": 8},
    }
    # The API validates its options like any method's, names it among the others, documents it.
    bad = client.post("/v1/jobs", json=body | {"method": {"type": "top_biases", "layers": 0}})
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "method.layers"
    typo = client.post("/v1/jobs", json=body | {"method": {"type": "top_bias"}})
    assert "did you mean `top_biases`?" in typo.json()["error"]["message"], typo.text
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "TopBiasesMethod" in schema
    assert "#/components/schemas/TopBiasesMethod" in str(schema["JobCreate"]["properties"])

    resp = client.post("/v1/jobs", json=body | {"method": {"type": "top_biases"}})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["method"] == {"type": "top_biases", "layers": 1}
    assert job["hyperparameters"]["learning_rate"] == 5e-2  # the method's default

    assert run_job(train_settings, job["id"]) == JobStatus.SUCCEEDED
    job = client.get(f"/v1/jobs/{job['id']}").json()
    model = client.get(f"/v1/models/{job['model_id']}").json()
    assert (model["method"], model["artifact"]) == ("top_biases", FULL)
    # What trained is what the method said: the head, the pooler and the top block's biases.
    changed = _changed(
        train_settings.local_models_dir / "tiny-bert",
        train_settings.data_dir / "models" / model["id"],
    )
    top_biases = {n for n in changed if n.startswith("bert.encoder.layer.1.")}
    assert top_biases and all(n.endswith(".bias") for n in top_biases), changed
    assert changed - top_biases == {
        "classifier.weight",
        "classifier.bias",
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
    }
    # The top block's 8 biases (7 of the hidden size 32, the intermediate one of 64), the
    # classifier (32 x 2 + 2) and the pooler (32 x 32 + 32).
    assert job["parameters"]["trainable"] == (7 * 32 + 64) + 66 + 1056

    predicted = client.post(
        "/v1/predict/classification",
        json={"model": model["id"], "inputs": ["a great superb film", "awful boring plot"]},
    )
    assert predicted.status_code == 200, predicted.text
    labels = [p[0]["label"] for p in predicted.json()["predictions"]]
    assert len(labels) == 2 and set(labels) <= {"pos", "neg"}


# A job kind, the way quantize and export are kinds (and distillation will be one): a `method`
# of its own, its submission checks, and what the worker runs. This one registers a copy of a
# registered model.


class CopyMethod(MethodOptions):
    """Register a copy of a registered model (base_model "model:<id>")."""

    type: Literal["copy"]


class Copy(DerivingKind):
    name = "copy"
    options_model = CopyMethod


class CopyRunner:
    name = "copy"

    def run(
        self, settings: Any, fence: AttemptFence, *, model_id: str
    ) -> tuple[Model, WrittenModel]:
        job = fence.job()
        with session_scope(fence.factory) as session:
            parent = session.get(Model, parent_id(job.base_model) or "")
            assert parent is not None
            session.expunge(parent)
        source = get_store(settings).local(parent.storage_path)
        meta = read_model_metadata(source)

        def save(directory: Path) -> None:
            for path in source.iterdir():
                if path.name != METADATA_FILE:
                    shutil.copy(path, directory / path.name)

        kept = {k: v for k, v in meta.items() if k not in ("files", "format_version")}
        copied = kept | {"model_id": model_id, "job_id": job.id, "method": {"type": "copy"}}
        written = write_model_dir(settings, model_id=model_id, save=save, meta=copied)
        row = Model(
            id=model_id,
            tenant_id=job.tenant_id,
            task=parent.task,
            base_model=job.base_model,
            method="copy",
            label_names=parent.label_names,
            metrics=parent.metrics,
            job_id=job.id,
            train_dataset_id=parent.train_dataset_id,
            validation_dataset_id=parent.validation_dataset_id,
            storage_path=written.storage_path,
            size_bytes=written.size_bytes,
            artifact=parent.artifact,
            parent_model_id=parent.id,
        )
        return row, written


@pytest.fixture
def copy_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kind registered on both sides, one line each."""
    monkeypatch.setitem(JOB_KINDS, "copy", Copy())
    monkeypatch.setitem(JOB_RUNNERS, "copy", CopyRunner())


def test_a_job_kind_registered_in_one_file_is_accepted_run_and_served(
    train_settings: Any, client: TestClient, copy_kind: None
) -> None:
    train = upload_rows(client, sentiment_rows(24))
    body = {"task": "classification", "base_model": TINY_MODEL_ID, "train_dataset": train}
    parent = client.post("/v1/jobs", json=body | {"hyperparameters": {"epochs": 1}}).json()
    assert run_job(train_settings, parent["id"]) == JobStatus.SUCCEEDED
    parent_model = client.get(f"/v1/jobs/{parent['id']}").json()["model_id"]

    derived = {"task": "classification", "base_model": f"model:{parent_model}"}
    # A kind that trains nothing takes no training fields and one process, as quantize does.
    busy = derived | {"method": {"type": "copy"}, "resources": {"processes": 2}}
    refused = client.post("/v1/jobs", json=busy)
    assert refused.status_code == 422 and "a copy job does not train" in refused.text
    seeded = client.post("/v1/jobs", json=derived | {"method": {"type": "copy"}, "seed": 1})
    assert seeded.json()["error"]["details"]["field"] == "seed", seeded.text

    resp = client.post("/v1/jobs", json=derived | {"method": {"type": "copy"}})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["train_dataset"] == train and job["method"] == {"type": "copy"}
    assert run_job(train_settings, job["id"]) == JobStatus.SUCCEEDED
    copy = client.get(f"/v1/jobs/{job['id']}").json()["model_id"]
    row = client.get(f"/v1/models/{copy}").json()
    assert (row["method"], row["parent_model"]) == ("copy", parent_model)

    texts = ["a great superb film", "awful boring plot", "the story"]
    answers = [
        client.post(
            "/v1/predict/classification", json={"model": m, "inputs": texts, "top_k": None}
        ).json()["predictions"]
        for m in (parent_model, copy)
    ]
    assert answers[0] == answers[1]
