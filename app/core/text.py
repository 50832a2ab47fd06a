"""Text fields of request bodies: valid Unicode always, and for a text a model must read, some
character a reader can see.

JSON may carry a lone UTF-16 surrogate (`"\\ud800"`, or its three raw bytes, which Python's json
reads the same way). It is no Unicode character: a tokenizer refuses it (a TypeError), a database
driver cannot encode it, and a UTF-8 response cannot hold it. Pydantic refuses one in a
constrained string but lets a plain `str` through, so these types check it themselves, before
any other check, and say where it is.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

# Unicode categories of characters that show nothing: controls (NUL, DEL...), format characters
# (zero-width spaces and joiners, bidi marks) and separators (spaces, line and paragraph breaks).
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def lone_surrogate(text: str) -> str | None:
    """Where `text` holds a lone surrogate, in plain words; None when it is valid Unicode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        return (
            f"has a lone UTF-16 surrogate (\\u{code:04x}) at character {exc.start}, which is not "
            "a Unicode character (\\ud800-\\udfff escapes are valid only as high-low pairs)"
        )
    return None


def escape_surrogates(text: str) -> str:
    """`text` with each lone surrogate written as its `\\udxxx` escape, safe to quote in UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_visible(text: str) -> bool:
    """Whether `text` has a character that shows: not only whitespace, controls and format
    characters such as zero-width spaces."""
    return any(unicodedata.category(ch) not in INVISIBLE_CATEGORIES for ch in text)


def _valid_unicode(value: Any) -> Any:
    # Before pydantic's own checks: a constrained string would otherwise fail as "unable to parse
    # raw data as a unicode string", without saying where.
    if isinstance(value, str):
        problem = lone_surrogate(value)
        if problem is not None:
            raise ValueError(problem)
    return value


def _visible(value: str) -> str:
    if not is_visible(value):
        raise ValueError(
            "has no visible character (only whitespace, control characters or invisible "
            "format characters such as zero-width spaces): there is no text to read"
        )
    return value


# Any valid Unicode text, empty and blank included.
UnicodeText = Annotated[str, BeforeValidator(_valid_unicode)]
# A text for a model to read: valid Unicode with at least one visible character.
RealText = Annotated[
    str, Field(min_length=1), BeforeValidator(_valid_unicode), AfterValidator(_visible)
]
