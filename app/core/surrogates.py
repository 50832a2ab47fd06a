"""Lone UTF-16 surrogates anywhere in a JSON body, found before any route reads the body.

JSON can carry `"\\ud800"` (or its three raw bytes, which Python's json reads alike): no Unicode
character, so no database driver, tokenizer or UTF-8 response can take it. The request schemas
refuse one in their own text fields (app/core/text.py); this check covers every other field of
every route (job specs, alias and key names, idempotency hashing) with the same words.
"""

from __future__ import annotations

import json
import re
from typing import Any

from app.core.text import lone_surrogate

# An escaped surrogate (`\ud8xx`-`\udfxx`) or the UTF-8-style bytes of one (ED A0-BF xx). Only a
# body that matches is parsed here; every other body costs one C-speed regex scan.
_MAYBE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def find_lone_surrogate(body: bytes) -> tuple[str, str] | None:
    """(field path, problem) of the first string of a JSON body holding a lone surrogate; None
    when there is none or the body is not JSON (the route answers that itself)."""
    if _MAYBE.search(body) is None:
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return _walk(document, "")


def _walk(value: Any, path: str) -> tuple[str, str] | None:
    if isinstance(value, str):
        problem = lone_surrogate(value)
        return None if problem is None else (path or "body", problem)
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _walk(item, f"{path}[{i}]")
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            problem = lone_surrogate(key)
            if problem is not None:
                return path or "body", f"a field name {problem}"
            found = _walk(item, where)
            if found is not None:
                return found
    return None
