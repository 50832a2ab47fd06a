"""What a field expects, in plain words ("a number greater than 0", "one of: a, b"), read from the
schema's annotations, or from a pydantic error alone where the schema is not at hand."""

from __future__ import annotations

import json
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

# A schema position: the annotation and the constraints that apply to the value there.
Metadata = list[Any]


@dataclass(frozen=True)
class Tagged:
    """Marks a union as discriminated by the field `name` (its members' tags are its values).

    With `members`, it stands for a union whose members are known only when the value is
    validated (a registry's options models): the annotation is read as that union."""

    name: str
    members: Callable[[], tuple[type, ...]] | None = None


def constraints(items: Sequence[Any]) -> Metadata:
    """Flatten Annotated metadata (FieldInfo, annotated_types groups) into single constraints."""
    flat: Metadata = []
    for item in items:
        if isinstance(item, FieldInfo):
            flat.extend(constraints(item.metadata))
            if isinstance(item.discriminator, str):
                flat.append(Tagged(item.discriminator))
        elif isinstance(item, at.GroupedMetadata):
            flat.extend(constraints(list(item)))
        else:
            flat.append(item)
    return flat


def is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def unwrap(tp: Any, meta: Metadata) -> tuple[Any, Metadata]:
    """Strip Annotated (keeping its constraints) and the None of an optional type; a type that
    stands for a registry's union (Tagged with members) becomes that union."""
    while True:
        if get_origin(tp) is Annotated:
            base, *extra = get_args(tp)
            tp, meta = base, [*meta, *constraints(extra)]
            continue
        registered = next((m for m in meta if isinstance(m, Tagged) and m.members), None)
        if registered is not None and registered.members is not None:
            # Read once: the metadata keeps the tag's name, without the members.
            tp = Union[registered.members()]  # noqa: UP007  (a tuple of types, known only now)
            meta = [Tagged(registered.name) if m is registered else m for m in meta]
            continue
        if is_union(tp):
            members = [m for m in get_args(tp) if m is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp, meta


def value_text(value: Any) -> str:
    """A JSON value as a client wrote it, for messages."""
    if isinstance(value, Enum):
        value = value.value
    return value if isinstance(value, str) else json.dumps(value)


def one_of(values: Sequence[Any]) -> str:
    texts = [value_text(v) for v in values]
    return texts[0] if len(texts) == 1 else "one of: " + ", ".join(texts)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _bounds(meta: Metadata) -> str:
    found: dict[str, Any] = {}
    for item in meta:
        for name in ("gt", "ge", "lt", "le"):
            if isinstance(item, at.BaseMetadata) and getattr(item, name, None) is not None:
                found[name] = getattr(item, name)
    words = {k: _number(v) for k, v in found.items()}
    if set(words) == {"ge", "le"}:
        return f" from {words['ge']} to {words['le']}"
    if set(words) == {"ge"}:
        return f" of {words['ge']} or more"
    if set(words) == {"le"}:
        return f" of {words['le']} or less"
    phrases = {"gt": "greater than", "ge": "at least", "lt": "less than", "le": "at most"}
    return (" " + " and ".join(f"{phrases[k]} {words[k]}" for k in phrases if k in words)).rstrip()


def _lengths(meta: Metadata, unit: str) -> tuple[int | None, int | None, str]:
    low = next((m.min_length for m in meta if isinstance(m, at.MinLen)), None)
    high = next((m.max_length for m in meta if isinstance(m, at.MaxLen)), None)
    plural = unit if high == 1 or (high is None and low == 1) else unit + "s"
    if low and high:
        return low, high, f" of {low} to {high} {plural}"
    if low:
        return low, high, f" of at least {low} {plural}"
    if high is not None:
        return low, high, f" of at most {high} {plural}"
    return low, high, ""


def _string(meta: Metadata) -> str:
    low, high, length = _lengths(meta, "character")
    text = "a non-empty string" if low == 1 and high is None else f"a string{length}"
    pattern = next((getattr(m, "pattern", None) for m in meta if getattr(m, "pattern", None)), None)
    return f"{text} matching the pattern `{pattern}`" if pattern else text


def describe(tp: Any, meta: Metadata | None = None) -> str | None:
    """The annotation `tp` (with its constraints) in plain words; None where it has no name."""
    tp, meta = unwrap(tp, list(meta or []))
    origin = get_origin(tp)
    if is_union(tp):
        parts = [describe(member) for member in get_args(tp) if member is not type(None)]
        if not all(parts):
            return None
        return ", or ".join(p for p in parts if p)
    if origin is Literal:
        return one_of(get_args(tp))
    if tp is type(None):
        return "null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number" + _bounds(meta)
    if tp is float:
        return "a number" + _bounds(meta)
    if tp is str:
        return _string(meta)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return one_of([m.value for m in tp])
    if isinstance(tp, type) and origin is None and issubclass(tp, BaseModel):
        return _object(list(tp.model_fields))
    if origin in (dict, Mapping) or (
        isinstance(tp, type) and origin is None and issubclass(tp, Mapping)
    ):
        return "an object"
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set):
        return "a list" + _lengths(meta, "item")[2]
    return None


def _object(fields: list[str]) -> str:
    # A small object's fields are part of what it is; a large one's would drown the message.
    if not fields or len(fields) > 4:
        return "an object"
    names = fields[0] if len(fields) == 1 else ", ".join(fields[:-1]) + " and " + fields[-1]
    return f"an object with the field{'s' if len(fields) > 1 else ''} {names}"


def _quoted(text: str) -> list[str]:
    return re.findall(r"'((?:[^'\\]|\\.)*)'", text)


# Pydantic error types whose message is about the value's type or range, which `describe` words
# better; the others (value_error from a validator, missing, extra...) keep their own message.
SHAPE_ERRORS = frozenset(
    {
        "bool_parsing", "bool_type", "dict_type", "enum", "finite_number", "float_parsing",
        "float_type", "greater_than", "greater_than_equal", "int_from_float", "int_parsing",
        "int_parsing_size", "int_type", "less_than", "less_than_equal", "list_type",
        "literal_error", "model_attributes_type", "model_type", "multiple_of", "string_too_long",
        "string_too_short", "string_type", "string_pattern_mismatch", "too_long", "too_short",
        "tuple_type", "set_type", "none_required",
    }
)  # fmt: skip


def from_error(kind: str, ctx: Mapping[str, Any]) -> str | None:
    """What was expected, from a pydantic error's type and context alone (no schema at hand)."""
    bound = {k: _number(v) for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")}
    simple = {
        "float_type": "a number",
        "float_parsing": "a number",
        "int_type": "a whole number",
        "int_parsing": "a whole number",
        "int_from_float": "a whole number",
        "int_parsing_size": "a whole number of a usable size",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "tuple_type": "a list",
        "set_type": "a list",
        "dict_type": "an object",
        "model_type": "an object",
        "model_attributes_type": "an object",
        "finite_number": "a finite number",
        "none_required": "null",
        "greater_than": f"a number greater than {bound.get('gt')}",
        "greater_than_equal": f"a number of {bound.get('ge')} or more",
        "less_than": f"a number less than {bound.get('lt')}",
        "less_than_equal": f"a number of {bound.get('le')} or less",
        "multiple_of": f"a multiple of {ctx.get('multiple_of')}",
        "string_too_short": f"a string of at least {ctx.get('min_length')} characters",
        "string_too_long": f"a string of at most {ctx.get('max_length')} characters",
        "string_pattern_mismatch": f"a string matching the pattern `{ctx.get('pattern')}`",
        "too_short": f"at least {ctx.get('min_length')} items",
        "too_long": f"at most {ctx.get('max_length')} items",
    }
    if kind in ("literal_error", "enum"):
        values = _quoted(str(ctx.get("expected", "")))
        return one_of(values) if values else None
    return simple.get(kind)
