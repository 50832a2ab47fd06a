"""OpenAI's chat fine-tuning format read as classification rows: the user turn is the text, the
assistant turn its label.

One JSON object a line, `{"messages": [{"role": "system", ...}, {"role": "user", "content": TEXT},
{"role": "assistant", "content": LABEL}]}`. System (and developer) turns come first and are
skipped: a classifier has no prompt, and one the same on every row would tell it nothing. Other
keys of a line (`tools`, an assistant turn's `weight`) mean nothing to a classifier and are
skipped too. A line of any other shape is refused, naming the line and the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from app.core.errors import InvalidInput
from app.ml.tables import ParsedTable

CHAT = "chat"
_SNIFF = re.compile(r'\A[\ufeff\s]*\{\s*"messages"\s*:')
PROMPT_ROLES = ("system", "developer")
# More distinct answers than this share of the rows (once there are enough rows to tell) reads
# as a file of free-text replies, which no classifier can learn as labels.
FREE_TEXT_SHARE = 0.5
FREE_TEXT_MIN_ROWS = 20


def sniff_chat(head: str) -> bool:
    """Whether a file starts like chat-format JSONL (its first key is "messages")."""
    return _SNIFF.match(head) is not None


def _error(line: int, field: str, message: str) -> InvalidInput:
    return InvalidInput(
        f"line {line}: {field}: {message}", code="invalid_chat_row", line=line, field=field
    )


def _content(message: dict[str, Any], line: int, at: str) -> str:
    """A turn's text: a string, or a list of text parts (joined with a space)."""
    value = message.get("content")
    field = f"{at}.content"
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise _error(line, f"{field}[{j}]", "only text parts can be classified")
            if not isinstance(part.get("text"), str):
                raise _error(line, f"{field}[{j}].text", "must be a string")
            texts.append(part["text"])
        value = " ".join(texts)
    if not isinstance(value, str):
        raise _error(line, field, f"must be a string, not {type(value).__name__}")
    if not value.strip():
        raise _error(line, field, "is empty")
    return value


def _row(obj: Any, line: int) -> tuple[str, str]:
    """(text, label) of one chat line."""
    if not isinstance(obj, dict):
        raise _error(line, "messages", "expected a JSON object with a 'messages' list")
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise _error(line, "messages", "must be a list of {role, content} objects")
    turns: list[tuple[int, Any, dict[str, Any]]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _error(line, f"messages[{i}]", "must be an object with 'role' and 'content'")
        role = message.get("role")
        if role in PROMPT_ROLES and not turns:
            continue
        turns.append((i, role, message))
    expected = ("user", "assistant")
    for (i, role, message), want in zip(turns, expected, strict=False):
        if role != want:
            raise _error(
                line,
                f"messages[{i}].role",
                f"expected '{want}', found {json.dumps(role)}: a classification row is optional "
                "system turns, then one user turn (the text) and one assistant turn (the label)",
            )
        if message.get("tool_calls") or message.get("function_call"):
            raise _error(line, f"messages[{i}].tool_calls", "a label cannot be a tool call")
    if len(turns) != len(expected):
        at = turns[len(expected)][0] if len(turns) > len(expected) else len(messages)
        found = "more turns" if len(turns) > len(expected) else "fewer turns"
        raise _error(
            line,
            f"messages[{at}]",
            f"{found} than a classification row has: optional system turns, then exactly one "
            "user turn (the text) and one assistant turn (the label)",
        )
    (ui, _, user), (ai, _, assistant) = turns
    return _content(user, line, f"messages[{ui}]"), _content(
        assistant, line, f"messages[{ai}]"
    ).strip()


def read_chat(path: Path, *, max_rows: int) -> ParsedTable:
    """Classification rows (text, label) from a chat-format JSONL file, with their lines."""
    texts: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8").removeprefix("\ufeff")
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"line {lineno}: invalid UTF-8; save the file as UTF-8",
                    code="invalid_encoding",
                    line=lineno,
                ) from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except RecursionError:
                raise _error(lineno, "messages", "JSON nested too deeply") from None
            except json.JSONDecodeError as exc:
                raise InvalidInput(
                    f"line {lineno}: invalid JSON at column {exc.colno}: {exc.msg}",
                    code="parse_error",
                    line=lineno,
                ) from None
            if len(texts) >= max_rows:
                raise InvalidInput(
                    f"line {lineno}: the file has more than {max_rows} rows (max_dataset_rows)",
                    code="too_many_rows",
                    line=lineno,
                    limit=max_rows,
                )
            row_text, label = _row(obj, lineno)
            texts.append(row_text)
            labels.append(label)
            lines.append(lineno)
    if not texts:
        raise InvalidInput("the uploaded file is empty", code="empty_file", field="file")
    _check_labels(labels)
    return ParsedTable(table=pa.table({"text": texts, "label": labels}), lines=lines)


def _check_labels(labels: list[str]) -> None:
    distinct = len(set(labels))
    if len(labels) >= FREE_TEXT_MIN_ROWS and distinct > FREE_TEXT_SHARE * len(labels):
        raise InvalidInput(
            f"the assistant turns hold {distinct} different answers in {len(labels)} rows: they "
            "read as free text, not as labels; a chat file trains a classifier when each "
            "assistant turn is one of a few labels (e.g. 'positive', 'negative')",
            code="not_labels",
            field="messages[].content",
        )
