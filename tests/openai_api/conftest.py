"""The official `openai` SDK as the client, talking to the real app in-process: its http_client is
the app's TestClient, so nothing leaves the process and the SDK builds every request itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from tests.tinymodel import sentiment_rows
from tests.worker.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    TINY_MODEL_ID,
    tiny_models_dir,
    train_settings,
)

BASE_URL = "http://testserver/openai/v1"


def make_sdk(client: TestClient, key: str) -> OpenAI:
    # No retries: a test that expects a 429 or 5xx sees it at once.
    return OpenAI(base_url=BASE_URL, api_key=key, http_client=client, max_retries=0)


@pytest.fixture
def sdk(client: TestClient, admin_key: str) -> OpenAI:
    return make_sdk(client, admin_key)


def chat_jsonl(rows: dict[str, list[Any]]) -> bytes:
    """Rows (text, label) as OpenAI chat fine-tuning lines."""
    lines = []
    for text, label in zip(rows["text"], rows["label"], strict=True):
        messages = [
            {"role": "system", "content": "Classify the sentiment."},
            {"role": "user", "content": text},
            {"role": "assistant", "content": label},
        ]
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def chat_file(sdk: OpenAI) -> Callable[..., str]:
    """Upload tiny sentiment rows in chat format through the SDK; the file id."""

    def upload(n: int = 24, name: str = "train.jsonl") -> str:
        content = chat_jsonl(sentiment_rows(n))
        return sdk.files.create(file=(name, content), purpose="fine-tune").id

    return upload


@pytest.fixture(autouse=True)
def _tiny_base_listed(train_settings: Any) -> None:  # noqa: F811
    """Every test here may name the tiny base model (local/tiny-bert)."""
