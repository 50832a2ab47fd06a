"""Pydantic validation errors in plain words: the field as a client writes it (`inputs[0].text`),
what was expected ("a number greater than 0"), what came, and for an unknown field or value the
nearest valid one. Pydantic's own names (`constrained-float`, `literal['auto']`, `float_parsing`)
never reach a message; its error type stays as the machine-readable `type`."""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard, get_args, get_origin

from pydantic import AliasChoices, BaseModel

from app.core import expected
from app.core.expected import Metadata, Tagged, constraints, describe, is_union, unwrap
from app.core.text import escape_surrogates, lone_surrogate

log = logging.getLogger("tuneserve.api")

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One invalid field: where, what is wrong in plain words, and pydantic's error type."""

    field: str
    message: str
    type: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message, "type": self.type}


def nearest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `word` (a likely typo of it), if any is close enough."""
    by_lower = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


def input_names(model: type[BaseModel]) -> list[str]:
    """The names a client may send for the fields of `model` (aliases where it has them)."""
    config = model.model_config
    by_name = bool(config.get("populate_by_name") or config.get("validate_by_name"))
    names: list[str] = []
    for name in model.model_fields:
        accepted = _names_of(model, name)
        if len(accepted) > 1 and not by_name:
            accepted = accepted[:-1]  # aliases only
        names.extend(n for n in accepted if n not in names)
    return names


def _names_of(model: type[BaseModel], name: str) -> list[str]:
    """The field's aliases, then its name."""
    info = model.model_fields[name]
    alias = info.validation_alias or info.alias
    if isinstance(alias, str):
        return [alias, name]
    if isinstance(alias, AliasChoices):
        return [*(c for c in alias.choices if isinstance(c, str)), name]
    return [name]


def path_text(path: Sequence[str | int]) -> str:
    """`inputs[0].text` from ("inputs", 0, "text")."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _got(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        count = len(value)
        return f"a list of {count} item{'' if count == 1 else 's'}" if value else "an empty list"
    if isinstance(value, bytes):
        return "text that is not JSON"
    # A lone surrogate is quoted as its escape (`"\\ud800"`): it cannot be written as UTF-8.
    text = escape_surrogates(json.dumps(value, ensure_ascii=False, default=str))
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class _Union:
    """A union the error went through: where it sits, which member the error is about."""

    index: int  # position of the member's tag in the raw loc
    path: Loc  # the value's path (tags left out)
    tp: Any
    meta: Metadata


@dataclass
class _Located:
    path: list[str | int] = field(default_factory=list)
    unions: list[_Union] = field(default_factory=list)
    tp: Any = None
    meta: Metadata = field(default_factory=list)
    model: type[BaseModel] | None = None  # the model whose field the path's last part names


def _is_model(tp: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(tp, type) and get_origin(tp) is None and issubclass(tp, BaseModel)


def _kind(tp: Any) -> str | None:
    tp, _ = unwrap(tp, [])
    origin = get_origin(tp)
    if origin is Literal:
        return "literal"
    if origin is not None:
        return getattr(origin, "__name__", None)
    return getattr(tp, "__name__", None)


def _member(union: Any, meta: Metadata, tag: str | int) -> tuple[Any, Metadata]:
    """The union member that pydantic's loc tag names (`lora`, `TextPair`, `constrained-float`)."""
    key = next((m.name for m in meta if isinstance(m, Tagged)), None)
    label = str(tag).removeprefix("constrained-").split("[")[0]
    for member in get_args(union):
        named = tag in _tags(member, key) if key is not None else label == _kind(member)
        if named:
            return member, []
    return None, []


def _step(tp: Any, meta: Metadata, part: str | int) -> tuple[Any, Metadata]:
    """The schema position one path part below (`tp`, `meta`); None where it is not known."""
    if _is_model(tp):
        for name, info in tp.model_fields.items():
            if part in _names_of(tp, name):
                return info.annotation, constraints([info])
        return None, []
    if isinstance(tp, Mapping):  # a namespace of parameters: name -> (annotation, metadata)
        found = tp.get(part)
        return found if found is not None else (None, [])
    origin, args = get_origin(tp), get_args(tp)
    if origin in (list, set, frozenset) and args and isinstance(part, int):
        return args[0], []
    if origin is tuple and args and isinstance(part, int):
        return (args[0] if args[-1] is Ellipsis or part >= len(args) else args[part]), []
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1], []
    return None, []


def locate(root: Any, loc: Loc) -> _Located:
    """Walk `loc` down the schema from `root`, telling union tags from fields and indexes."""
    found = _Located(tp=root)
    for i, part in enumerate(loc):
        if found.tp is not None:
            found.tp, found.meta = unwrap(found.tp, found.meta)
        if found.tp is not None and is_union(found.tp):
            found.unions.append(_Union(i, tuple(found.path), found.tp, found.meta))
            found.tp, found.meta = _member(found.tp, found.meta, part)
            continue
        found.model = found.tp if _is_model(found.tp) else None
        found.path.append(part)
        found.tp, found.meta = _step(found.tp, found.meta, part)
    return found


@dataclass
class _Item:
    error: Mapping[str, Any]
    where: _Located
    # Set on an item that stands for a whole union none of whose members matched.
    merged: list[Mapping[str, Any]] | None = None

    def shallow_at(self, level: int) -> bool:
        """Whether the error is about the value at that union itself (its type or range), not
        about something inside the member (so another member might have been meant)."""
        return len(self.error["loc"]) == self.where.unions[level].index + 1 and self.error[
            "type"
        ] not in ("value_error", "assertion_error")


def _choose(items: list[_Item], level: int = 0) -> list[_Item]:
    """Keep, for each union, the errors of the member the client evidently meant: one whose
    errors lie inside it (the fewest, at a tie the first); where every member refused the value
    itself, one error for the union that names all it accepts."""
    slots: list[_Item | list[_Item]] = []
    groups: dict[Loc, list[_Item]] = {}
    for item in items:
        if len(item.where.unions) <= level:
            slots.append(item)
            continue
        key = tuple(item.error["loc"][: item.where.unions[level].index])
        if key not in groups:
            groups[key] = []
            slots.append(groups[key])
        groups[key].append(item)
    out: list[_Item] = []
    for slot in slots:
        if isinstance(slot, _Item):
            out.append(slot)
            continue
        branches: dict[Any, list[_Item]] = {}
        for item in slot:
            branches.setdefault(item.error["loc"][item.where.unions[level].index], []).append(item)
        deep = [b for b in branches.values() if any(not i.shallow_at(level) for i in b)]
        if deep:
            out.extend(_choose(min(deep, key=len), level + 1))
            continue
        union = slot[0].where.unions[level]
        where = _Located(path=list(union.path), tp=union.tp, meta=union.meta)
        out.append(_Item(slot[0].error, where, merged=[i.error for i in slot]))
    return out


def _accepted(item: _Item) -> str | None:
    if not item.where.path and isinstance(item.where.tp, type):
        return "a JSON object"  # the body itself
    described = describe(item.where.tp, item.where.meta) if item.where.tp is not None else None
    if described:
        return described
    parts = [
        expected.from_error(str(e["type"]), e.get("ctx") or {}) for e in item.merged or [item.error]
    ]
    return ", or ".join(dict.fromkeys(p for p in parts if p)) or None


def _allowed_values(item: _Item) -> list[str]:
    tp, _ = unwrap(item.where.tp, []) if item.where.tp is not None else (None, [])
    if get_origin(tp) is Literal:
        return [str(v) for v in get_args(tp)]
    if isinstance(tp, type) and hasattr(tp, "__members__"):
        return [str(m.value) for m in tp.__members__.values()]
    return []


def _render(item: _Item, label: str) -> Problem:
    err = item.error
    kind = str(err["type"])
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    name = label or "the request body"
    if kind == "missing":
        wanted = _accepted(item)
        text = f"{name}: this field is required" if label else "the request body is missing"
        return Problem(label or "body", text + (f"; expected {wanted}" if wanted else ""), kind)
    if kind == "extra_forbidden":
        return Problem(label, _unknown_field(item, label), kind)
    if kind == "string_unicode" and isinstance(err.get("input"), str):
        # Pydantic's "unable to parse raw data as a unicode string": a lone surrogate.
        problem = lone_surrogate(err["input"]) or "is not valid Unicode"
        return Problem(label or "body", f"{name}: {problem}", kind)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _bad_tag(item, label, kind, ctx)
    if kind in expected.SHAPE_ERRORS or item.merged:
        wanted = _accepted(item) or str(err.get("msg", "invalid"))
        text = f"{name}: expected {wanted}; got {_got(err.get('input'))}"
        value = err.get("input")
        close = nearest(value, _allowed_values(item)) if isinstance(value, str) else None
        hint = f"; did you mean `{close}`?" if close else ""
        return Problem(label or "body", text + hint, kind)
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return Problem(label or "body", f"{name}: {msg}", kind)


def _unknown_field(item: _Item, label: str) -> str:
    text = f"unknown field `{label}`"
    model, part = item.where.model, item.where.path[-1]
    if model is None or not isinstance(part, str):
        return text
    names = input_names(model)
    parent = path_text(item.where.path[:-1])
    close = nearest(part, names)
    if close is not None:
        return f"{text}; did you mean `{path_text([*item.where.path[:-1], close])}`?"
    if not names:
        return f"{text}; `{parent}` takes no fields" if parent else f"{text}; no fields are taken"
    where = f" of `{parent}`" if parent else ""
    return f"{text}; the fields{where} are: {', '.join(names)}"


def _tags(tp: Any, key: str, meta: Metadata | None = None) -> list[Any]:
    """The tag values (of field `key`) of a model, or of each model of a union, in order."""
    base, _ = unwrap(tp, list(meta or []))
    if is_union(base):
        return [tag for member in get_args(base) for tag in _tags(member, key)]
    if _is_model(base) and key in base.model_fields:
        return list(get_args(base.model_fields[key].annotation))
    return []


def _bad_tag(item: _Item, label: str, kind: str, ctx: Mapping[str, Any]) -> Problem:
    key = str(ctx.get("discriminator", "type")).strip("'")
    where = path_text([*item.where.path, key])
    tags = [str(t) for t in _tags(item.where.tp, key, item.where.meta)] or [
        t for t in str(ctx.get("expected_tags", "")).replace("'", "").split(", ") if t
    ]
    wanted = expected.one_of(tags) if tags else "a known value"
    if kind == "union_tag_not_found":
        return Problem(where, f"{where}: this field is required; expected {wanted}", kind)
    tag = str(ctx.get("tag", ""))
    close = nearest(tag, tags)
    hint = f"; did you mean `{close}`?" if close else ""
    return Problem(where, f"{where}: expected {wanted}; got {json.dumps(tag)}{hint}", kind)


def plain_errors(
    errors: Sequence[Mapping[str, Any]], *, root: Any = None, prefix: Loc = ()
) -> list[Problem]:
    """`errors` (pydantic's, their loc relative to `root`, a model or a parameter namespace) in
    plain words; `prefix` goes before each field (e.g. ("task_options",))."""
    try:
        return _plain(errors, root, prefix)
    except Exception:  # a schema this walk cannot read: the paths, in pydantic's words
        log.exception("could not read validation errors against their schema")
        found = [(path_text([*prefix, *e["loc"]]) or "body", e) for e in errors]
        return [Problem(f, f"{f}: {e.get('msg', 'invalid')}", str(e["type"])) for f, e in found]


def _plain(errors: Sequence[Mapping[str, Any]], root: Any, prefix: Loc) -> list[Problem]:
    items = _choose([_Item(err, locate(root, tuple(err["loc"]))) for err in errors])
    problems: list[Problem] = []
    for item in items:
        item.where.path = [*prefix, *item.where.path]
        problem = _render(item, path_text(item.where.path))
        if problem not in problems:
            problems.append(problem)
    return problems


# Python's json messages, in plain words.
_JSON_MESSAGES = {
    "Expecting value": "expected a value (a string, number, object, list, true, false or null)",
    "Expecting ',' delimiter": "expected a comma, or the end of the object or list",
    "Expecting ':' delimiter": "expected a colon after the field name",
    "Expecting property name enclosed in double quotes": "expected a field name in double quotes "
    "(JSON has no single quotes, comments or trailing commas)",
    "Unterminated string starting at": "a string starts here and is never closed",
    "Invalid control character at": "a control character (a line break or tab) inside a string; "
    "write it as \\n or \\t",
    "Invalid \\escape": "an invalid escape sequence (a backslash) in a string",
    "Invalid \\uXXXX escape": "an invalid \\u escape in a string",
    "Extra data": "more data after the end of the JSON value",
}


def json_problem(doc: str | bytes, pos: int, msg: str) -> tuple[str, dict[str, int]]:
    """A JSON syntax error as a message naming its line and column, and those as details."""
    text = doc.decode("utf-8", "replace") if isinstance(doc, bytes) else str(doc)
    pos = max(0, min(pos, len(text)))
    line = text.count("\n", 0, pos) + 1
    start = text.rfind("\n", 0, pos) + 1
    column = pos - start + 1
    end = text.find("\n", pos)
    excerpt = text[max(start, pos - 30) : min(end if end >= 0 else len(text), pos + 30)].strip()
    what = _JSON_MESSAGES.get(msg, msg[:1].lower() + msg[1:])
    message = f"the request body is not valid JSON: line {line}, column {column}: {what}"
    if excerpt:
        message += f" (near `{excerpt}`)"
    return message, {"line": line, "column": column}
