"""OpenAI's chat fine-tuning JSONL as a classification dataset (user turn = text, assistant turn =
label), through /v1/datasets: detected, read, and every row that does not fit refused by line."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient


def chat_row(text: Any, label: Any, system: str | None = "Classify the sentiment.") -> str:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages += [{"role": "user", "content": text}, {"role": "assistant", "content": label}]
    return json.dumps({"messages": messages})


def chat_file(rows: list[tuple[Any, Any]]) -> bytes:
    return ("\n".join(chat_row(t, label) for t, label in rows) + "\n").encode()


def upload(client: TestClient, content: bytes, **fields: str) -> Any:
    return client.post(
        "/v1/datasets",
        data={"task": "classification", **fields},
        files={"file": ("train.jsonl", content)},
    )


def test_chat_file_becomes_text_and_label(client: TestClient) -> None:
    rows = [("great film", "positive"), ("dull plot", " negative "), ("loved it", "positive")]
    resp = upload(client, chat_file(rows))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["format"] == "chat"
    assert body["columns"] == ["text", "label"]
    assert body["num_rows"] == 3
    assert body["label_counts"] == {"negative": 1, "positive": 2}


def test_text_parts_and_no_system_turn(client: TestClient) -> None:
    parts = [{"type": "text", "text": "good"}, {"type": "text", "text": "movie"}]
    content = (
        chat_row(parts, "pos", system=None) + "\n" + chat_row("bad", "neg", system=None) + "\n"
    )
    resp = upload(client, content.encode())
    assert resp.status_code == 201, resp.text
    assert resp.json()["label_names"] == ["neg", "pos"]


@pytest.mark.parametrize(
    ("line2", "field", "words"),
    [
        (chat_row("ok", 3), "messages[2].content", "must be a string"),
        (chat_row("", "pos"), "messages[1].content", "is empty"),
        (chat_row("ok", "  "), "messages[2].content", "is empty"),
        (
            json.dumps({"messages": [{"role": "assistant", "content": "pos"}]}),
            "messages[0].role",
            "expected 'user'",
        ),
        (
            json.dumps({"messages": [{"role": "user", "content": "x"}]}),
            "messages[1]",
            "fewer turns",
        ),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "x"},
                        {"role": "assistant", "content": "pos"},
                        {"role": "user", "content": "y"},
                    ]
                }
            ),
            "messages[2]",
            "more turns",
        ),
        (json.dumps({"messages": "hello"}), "messages", "must be a list"),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "x"},
                        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                    ]
                }
            ),
            "messages[1].tool_calls",
            "tool call",
        ),
    ],
)
def test_row_that_does_not_fit_names_line_and_field(
    client: TestClient, line2: str, field: str, words: str
) -> None:
    content = (chat_row("fine", "pos") + "\n" + line2 + "\n").encode()
    resp = upload(client, content)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["message"].startswith(f"line 2: {field}: "), error
    assert words in error["message"]
    assert error["details"]["line"] == 2
    assert error["details"]["field"] == field


def test_invalid_json_line_is_named(client: TestClient) -> None:
    content = (chat_row("fine", "pos") + "\n\n" + '{"messages": [' + "\n").encode()
    resp = upload(client, content)
    assert resp.status_code == 422
    assert resp.json()["error"]["message"].startswith("line 3: invalid JSON")


def test_free_text_replies_are_not_labels(client: TestClient) -> None:
    rows = [(f"question {i}", f"a long reply number {i}") for i in range(30)]
    resp = upload(client, chat_file(rows))
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "not_labels"
    assert "30 different answers in 30 rows" in resp.json()["error"]["message"]


def test_plain_jsonl_is_not_taken_for_chat(client: TestClient) -> None:
    content = b'{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n'
    resp = upload(client, content)
    assert resp.status_code == 201, resp.text
    assert resp.json()["format"] == "jsonl"
