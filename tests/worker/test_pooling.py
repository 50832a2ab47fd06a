"""Classifiers over the mean of the token vectors: a base that declares mean pooling (as a
sentence-transformers checkpoint does) gets a head_only probe on that mean, trained, saved,
served and continued with the same head."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import JobStatus, Model
from app.ml.loading import load_model, load_model_for_training, load_tokenizer
from app.ml.pooling import POOLING_KEY, declared_pooling
from app.ml.tasks import get_task
from tests.tinymodel import build_tiny_model_dir, sentiment_rows
from worker.jobs import run_job

CLASSIFICATION = get_task("classification")


def declare_pooling(path: Path, modes: dict[str, bool], *, folder: str = "1_Pooling") -> Path:
    """Add sentence-transformers' module list and pooling config to a model directory."""
    modules = [("", "Transformer"), (folder, "Pooling")]
    (path / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": i,
                    "name": str(i),
                    "path": where,
                    "type": f"sentence_transformers.models.{kind}",
                }
                for i, (where, kind) in enumerate(modules)
            ]
        )
    )
    (path / folder).mkdir(exist_ok=True)
    (path / folder / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, **modes})
    )
    return path


MEAN = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}


@pytest.fixture(scope="module")
def mean_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT that declares mean pooling, as "local/tiny-bert" of its own models dir."""
    root = tmp_path_factory.mktemp("mean-models")
    declare_pooling(build_tiny_model_dir(root / "tiny-bert"), MEAN)
    return root


def test_declared_pooling_reads_the_sentence_transformers_config(tmp_path: Path) -> None:
    def declared(modes: dict[str, bool], **kw: str) -> str | None:
        path = tmp_path / str(len(list(tmp_path.iterdir())))
        path.mkdir()
        return declared_pooling(declare_pooling(path, modes, **kw))

    assert declared(MEAN) == "mean"
    assert declared(MEAN, folder="pool") == "mean"  # found through modules.json
    assert declared({"pooling_mode_cls_token": True}) == "cls"
    assert declared({"pooling_mode_max_tokens": True}) is None  # no linear-probe equivalent
    assert declared({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}) is None
    assert declared_pooling(tmp_path) is None  # no modules.json: a plain checkpoint
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "modules.json").write_text("[{")
    assert declared_pooling(broken) is None


def test_the_head_reads_the_mean_of_the_real_tokens(mean_base: Path, tmp_path: Path) -> None:
    base = mean_base / "tiny-bert"
    model, new = load_model_for_training(
        CLASSIFICATION, base, label_names=["neg", "pos"], pooling="mean"
    )
    assert sorted(new) == ["classifier.bias", "classifier.weight"]
    assert not any("pooler" in name for name, _ in model.named_parameters())
    model.eval()
    tokenizer = load_tokenizer(base)
    texts = ["good", "the movie was very boring and the plot was dull"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        together = model(**batch).logits
        alone = [model(**tokenizer([t], return_tensors="pt")).logits[0] for t in texts]
        # What the head must read: the body's vectors of the real tokens, averaged.
        hidden = model.bert(**tokenizer([texts[0]], return_tensors="pt")).last_hidden_state
        expected = model.classifier(hidden.mean(dim=1))[0]
    for row, single in zip(together, alone, strict=True):
        assert torch.allclose(row, single, atol=1e-5)  # padding changes nothing
    assert torch.allclose(alone[0], expected, atol=1e-5)

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())[POOLING_KEY] == "mean"
    again = load_model(CLASSIFICATION, tmp_path)
    assert type(again) is type(model)
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, together, atol=1e-6)

    from app.predict.traced import traced_forward

    assert traced_forward(again, tokenizer) is not None  # served from a checked trace


def test_a_plain_base_keeps_the_architectures_head(tiny_models_dir: Path) -> None:
    model, _ = load_model_for_training(
        CLASSIFICATION, tiny_models_dir / "tiny-bert", label_names=["neg", "pos"]
    )
    assert type(model).__name__ == "BertForSequenceClassification"
    assert getattr(model.config, POOLING_KEY, None) is None


def _train(settings: Any, db: Session, add_job: Callable[..., str], **kw: Any) -> Model:
    job_id = add_job(**kw)
    assert run_job(settings, job_id) == JobStatus.SUCCEEDED
    return db.scalars(select(Model).where(Model.job_id == job_id)).one()


def _served_scores(client: Any, model_id: str, texts: list[str], **options: Any) -> list[Any]:
    """/predict's scores of each text, by label."""
    answer = client.post(
        "/v1/predict/classification", json={"model": model_id, "inputs": texts, **options}
    )
    assert answer.status_code == 200, answer.text
    return [{p["label"]: p["score"] for p in row} for row in answer.json()["predictions"]]


def _run_through_api(settings: Any, client: Any, spec: dict[str, Any]) -> str:
    """Submit a job, run it in the worker's code, and return its model's id."""
    resp = client.post("/v1/jobs", json=spec)
    assert resp.status_code == 201, resp.text
    assert run_job(settings, resp.json()["id"]) == JobStatus.SUCCEEDED
    return str(client.get(f"/v1/jobs/{resp.json()['id']}").json()["model_id"])


def _weights(settings: Any, row: Model) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(settings.data_dir / row.storage_path / "model.safetensors"))


def test_head_only_probes_the_declared_mean_and_children_keep_it(
    train_settings: Any,
    mean_base: Path,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
) -> None:
    from app.predict.predictor import load_predictor

    train_settings.local_models_dir = mean_base
    probe = _train(
        train_settings, db, add_job, method={"type": "head_only"}, epochs=2, learning_rate=1e-2
    )
    path = train_settings.data_dir / probe.storage_path
    meta = json.loads((path / "tuneserve.json").read_text())
    assert meta["method"]["pooling"] == "mean"  # "auto", as the base declares
    assert meta["parameters"]["trainable"] == 32 * 2 + 2  # the linear layer alone
    assert json.loads((path / "config.json").read_text())[POOLING_KEY] == "mean"
    trained = _weights(train_settings, probe)
    base = load_model_for_training(
        CLASSIFICATION, mean_base / "tiny-bert", label_names=["neg", "pos"], pooling="mean"
    )[0].state_dict()
    changed = sorted(k for k in trained if not torch.equal(trained[k], base[k]))
    assert changed == ["classifier.bias", "classifier.weight"]

    # Served as it trained: the predictor's answer is the saved model's own.
    predictor = load_predictor(train_settings, probe)
    request = CLASSIFICATION.predict_request.model_validate(
        {"model": probe.id, "inputs": ["good fun", "awful and dull"], "top_k": 2}
    )
    served = predictor.predict(request)
    model = load_model(CLASSIFICATION, path)
    tokenizer = load_tokenizer(path)
    with torch.no_grad():
        probs = model(**tokenizer(["good fun"], return_tensors="pt")).logits.softmax(-1)[0]
    scores = {p.label: p.score for p in served[0]}
    assert scores == pytest.approx(
        {name: float(p) for name, p in zip(probe.label_names, probs, strict=True)}, abs=1e-4
    )

    # LoRA children go on from the probe's head and pooling, and are served with them: merged,
    # and as an adapter on the shared copy of the probe.
    from app.predict.shared import SharedBases

    merged, adapter = (
        _train(
            train_settings,
            db,
            add_job,
            base_model=f"model:{probe.id}",
            train=add_dataset(sentiment_rows(20, seed=5)),
            method={"type": "lora", "r": 2, "merge_adapter": merge},
            epochs=1,
        )
        for merge in (True, False)
    )
    merged_path = train_settings.data_dir / merged.storage_path
    assert json.loads((merged_path / "config.json").read_text())[POOLING_KEY] == "mean"
    assert type(load_model(CLASSIFICATION, merged_path)).__name__.startswith("MeanPooled")
    served = load_predictor(train_settings, adapter, shared=SharedBases())
    bases = [type(m).__name__ for m in served.model.modules()]
    assert any(name.startswith("MeanPooled") for name in bases)
    assert not any("pooler" in name for name, _ in served.model.named_parameters())
    # The adapter's answers are the merged child's (same seed, rows and steps).
    want = load_predictor(train_settings, merged).predict(request)
    for got_row, want_row in zip(served.predict(request), want, strict=True):
        assert {p.label: p.score for p in got_row} == pytest.approx(
            {p.label: p.score for p in want_row}, abs=1e-4
        )


@pytest.mark.parametrize(
    ("declares", "asked", "pooling"),
    [(None, "auto", "cls"), ("mean", "cls", "cls"), (None, "mean", "mean")],
    ids=["plain-base", "forced-cls", "forced-mean"],
)
def test_pooling_as_declared_or_asked(
    train_settings: Any,
    tmp_path: Path,
    db: Session,
    add_job: Callable[..., str],
    declares: str | None,
    asked: str,
    pooling: str,
) -> None:
    base = build_tiny_model_dir(tmp_path / "models" / "tiny-bert")
    if declares:
        declare_pooling(base, MEAN)
    train_settings.local_models_dir = base.parent
    row = _train(train_settings, db, add_job, method={"type": "head_only", "pooling": asked})
    path = train_settings.data_dir / row.storage_path
    assert json.loads((path / "tuneserve.json").read_text())["method"]["pooling"] == pooling
    assert json.loads((path / "config.json").read_text())[POOLING_KEY] == pooling
    pooler = "bert.pooler.dense.weight" in _weights(train_settings, row)
    assert pooler == (pooling == "cls")
    assert type(load_model(CLASSIFICATION, path)).__name__.startswith("MeanPooled") == (
        pooling == "mean"
    )


def test_a_registered_model_keeps_its_head() -> None:
    from app.core.errors import InvalidInput
    from app.job.schemas import Hyperparameters
    from app.ml.methods import get_method
    from app.ml.methods.base import SubmitContext
    from app.ml.methods.head_only import HeadOnlyMethod

    def check(pooling: str, base_model: str) -> None:
        context = SubmitContext(
            task=CLASSIFICATION,
            hyperparameters=Hyperparameters(),
            base_model=base_model,
            num_layers=6,
        )
        get_method("head_only").check(HeadOnlyMethod(type="head_only", pooling=pooling), context)

    check("mean", "local/tiny-bert")
    check("auto", "model:mdl_1")
    with pytest.raises(InvalidInput) as err:
        check("mean", "model:mdl_1")
    assert err.value.details["field"] == "method.pooling" and "model:mdl_1" in err.value.message


@pytest.mark.parametrize(
    ("method", "tolerance"),
    [
        ({"type": "export", "quantization": "none"}, 1e-4),
        ({"type": "quantize", "scheme": "int8_dynamic"}, 0.05),
    ],
    ids=["onnx", "int8"],
)
def test_exported_and_quantized_probes_answer_as_it_does(
    train_settings: Any,
    mean_base: Path,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
    client: Any,
    method: dict[str, Any],
    tolerance: float,
) -> None:
    train_settings.local_models_dir = mean_base
    probe = _train(
        train_settings,
        db,
        add_job,
        method={"type": "head_only"},
        train=add_dataset(sentiment_rows(60, seed=2)),
        epochs=3,
        learning_rate=3e-2,
    )
    spec = {"task": "classification", "base_model": f"model:{probe.id}", "method": method}
    copy = _run_through_api(train_settings, client, spec)
    texts = ["great fun", "dull and cold", "the plot"]
    served = [_served_scores(client, m, texts) for m in (copy, probe.id)]
    for got, want in zip(*served, strict=True):
        assert got == pytest.approx(want, abs=tolerance)


def test_a_download_says_how_to_load_it_without_tuneserve(
    train_settings: Any,
    mean_base: Path,
    db: Session,
    add_job: Callable[..., str],
    client: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.registry.test_download import extract, python_block

    train_settings.local_models_dir = mean_base
    probe = _train(train_settings, db, add_job, method={"type": "head_only"}, learning_rate=3e-2)
    folder = extract(client.get(f"/v1/models/{probe.id}/download"), probe.id, tmp_path)
    readme = (folder / "README.md").read_text()
    assert "mean of the token vectors" in readme and str(train_settings.data_dir) not in readme

    texts = ["a great superb film", "awful boring plot", "the movie was very dull and cold"]
    want = _served_scores(client, probe.id, texts, top_k=2)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(python_block(readme), scope)  # noqa: S102  (our own README's code, run as a user would)
    for got, expected in zip(scope["predict"](texts), want, strict=True):
        assert got == pytest.approx(expected, abs=1e-4)
    # What the README warns of: the stock class reads the first token and answers otherwise.
    from transformers import AutoModelForSequenceClassification

    stock = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    inputs = scope["tokenizer"](texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        probs = stock(**inputs).logits.softmax(dim=-1)
    assert not torch.allclose(
        probs, torch.tensor([[s[k] for k in probe.label_names] for s in want]), atol=1e-3
    )

    # A model over the first token downloads as it is stored, with no such README.
    train_settings.local_models_dir = mean_base
    plain = _train(train_settings, db, add_job, method={"type": "head_only", "pooling": "cls"})
    other = extract(client.get(f"/v1/models/{plain.id}/download"), plain.id, tmp_path / "cls")
    assert not (other / "README.md").exists()


def test_an_adapter_on_a_mean_probe_downloads_with_what_loads_it(
    train_settings: Any,
    mean_base: Path,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
    client: Any,
    tmp_path: Path,
) -> None:
    from tests.registry.test_download import extract

    train_settings.local_models_dir = mean_base
    probe = _train(train_settings, db, add_job, method={"type": "head_only"}, learning_rate=3e-2)
    child = _train(
        train_settings,
        db,
        add_job,
        base_model=f"model:{probe.id}",
        train=add_dataset(sentiment_rows(20, seed=6)),
        method={"type": "lora", "r": 2},
        epochs=1,
    )
    meta = json.loads((train_settings.data_dir / child.storage_path / "tuneserve.json").read_text())
    assert meta["pooling"] == "mean"
    folder = extract(client.get(f"/v1/models/{child.id}/download"), child.id, tmp_path)
    readme = (folder / "README.md").read_text()
    # No stock-class code that would answer otherwise; the export it names instead.
    assert "```python" not in readme and "mean of the token vectors" in readme
    job = json.loads(readme.split("(a job `", 1)[1].split("`)", 1)[0])
    exported = _run_through_api(train_settings, client, job)
    texts = ["great fun", "dull and cold"]
    served = [_served_scores(client, m, texts, top_k=2) for m in (exported, child.id)]
    for got, want in zip(*served, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    # A plain base's adapter keeps its peft code.
    plain = _train(train_settings, db, add_job, method={"type": "lora", "r": 2}, epochs=1)
    card = extract(client.get(f"/v1/models/{plain.id}/download"), plain.id, tmp_path / "plain")
    assert "```python" in (card / "README.md").read_text()
