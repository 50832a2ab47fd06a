"""Tokenizers of served models: one object per set of tokenizer files, called one call at a time.

A fast tokenizer holds about 10 MB (vocabulary and merges in Rust), more than a LoRA adapter's
weights, so twenty adapters of one base each with its own tokenizer would hold 200 MB of copies.
Models whose tokenizer files are byte-for-byte the same share one.

A fast tokenizer also keeps its truncation and padding settings in the Rust object: each call sets
them and then encodes (with the GIL released), so two threads calling it with different arguments
(NER counts sub-tokens unpadded, then tokenizes windows padded; QA clips questions untruncated,
then cuts contexts truncated) get each other's settings: a batch asked padded comes back unpadded.
So every served model reaches its tokenizer through a `SerializedTokenizer`, which runs the calls
of one tokenizer object one at a time, whoever makes them.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from app.ml.loading import load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Files of a model directory that are not the tokenizer's (anything else counts as the tokenizer's).
_NOT_TOKENIZER = {"config.json", "adapter_config.json", "generation_config.json", "README.md"}
_NOT_TOKENIZER_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def tokenizer_digest(path: Path) -> str:
    """A hash of the tokenizer's files in a model directory."""
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if (
            not file.is_file()
            or file.name in _NOT_TOKENIZER
            or file.name.startswith("tuneserve")
            or file.name.endswith(_NOT_TOKENIZER_SUFFIXES)
        ):
            continue
        digest.update(file.name.encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


# The Rust tokenizer itself would let a caller change the shared settings outside the lock.
_NOT_HANDED_OUT = frozenset({"backend_tokenizer", "_tokenizer"})


class SerializedTokenizer:
    """Stands in for a tokenizer: its calls and methods run one at a time, attributes read through.

    The lock covers every call (`__call__`, `encode`, `pad`, `decode`, ...), each of which sets the
    settings it needs and encodes under it; a request's several calls may interleave with another
    request's, never overlap. Setting attributes (a shared `padding_side`) is refused.
    """

    __slots__ = ("_wrapped", "_lock", "__weakref__")

    _wrapped: PreTrainedTokenizerBase
    _lock: threading.Lock

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        object.__setattr__(self, "_wrapped", tokenizer)
        object.__setattr__(self, "_lock", threading.Lock())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._wrapped(*args, **kwargs)

    def busy(self) -> bool:
        """Whether a call is running now (a caller on the event loop would wait for it)."""
        return self._lock.locked()

    def __getattr__(self, name: str) -> Any:
        if name in _NOT_HANDED_OUT:
            raise AttributeError(
                f"{name}: a served tokenizer's backend is shared; pass settings per call"
            )
        value = getattr(self._wrapped, name)
        if not callable(value) or getattr(value, "__self__", None) is not self._wrapped:
            return value
        method: Callable[..., Any] = value
        lock = self._lock

        def locked(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return method(*args, **kwargs)

        return locked

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"{name}: a served tokenizer is shared between models and requests; "
            "pass settings per call"
        )

    def __len__(self) -> int:
        return len(self._wrapped)

    def __repr__(self) -> str:
        return f"SerializedTokenizer({self._wrapped!r})"


# The wrapper of each tokenizer object, so that whatever wraps one tokenizer shares its lock.
_wrappers: weakref.WeakValueDictionary[int, SerializedTokenizer] = weakref.WeakValueDictionary()
_wrappers_lock = threading.Lock()


def serialized(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """`tokenizer` behind its one `SerializedTokenizer` (the same for every caller)."""
    if isinstance(tokenizer, SerializedTokenizer):
        return tokenizer
    with _wrappers_lock:
        # A wrapper holds its tokenizer, so while it lives no other object has that id.
        wrapper = _wrappers.get(id(tokenizer))
        if wrapper is None:
            wrapper = SerializedTokenizer(tokenizer)
            _wrappers[id(tokenizer)] = wrapper
    # It answers every call and attribute a tokenizer does.
    return cast("PreTrainedTokenizerBase", wrapper)


class TokenizerPool:
    """Loaded (serialized) tokenizers by their files; one goes when no predictor holds it."""

    def __init__(self) -> None:
        self._loaded: weakref.WeakValueDictionary[str, PreTrainedTokenizerBase] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()

    def get(self, path: Path) -> PreTrainedTokenizerBase:
        """The tokenizer saved in `path`, shared with models whose tokenizer files are the same
        (of any task, called with any arguments: its calls run one at a time)."""
        key = tokenizer_digest(path)
        with self._lock:
            found = self._loaded.get(key)
            if found is not None:
                return found
            tokenizer = serialized(load_tokenizer(path))
            self._loaded[key] = tokenizer
            return tokenizer

    def __len__(self) -> int:
        return len(self._loaded)


TOKENIZERS = TokenizerPool()
