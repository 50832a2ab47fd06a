"""One tokenizer object for the served models that tokenize alike.

A fast tokenizer holds about 10 MB (vocabulary and merges in Rust), more than a LoRA adapter's
weights, so twenty adapters of one base each with its own tokenizer would hold 200 MB of copies.
Models whose tokenizer files are byte-for-byte the same, of the same task and `max_length`, share
one: they call it with the same arguments, as the requests of one model do. (A fast tokenizer keeps
its truncation and padding settings in the object and changes them when called with others, so
tokenizers called with different arguments from concurrent requests are never shared.)
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING

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


class TokenizerPool:
    """Loaded tokenizers by (files, how they are called); one goes when no predictor holds it."""

    def __init__(self) -> None:
        self._loaded: weakref.WeakValueDictionary[Hashable, PreTrainedTokenizerBase] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()

    def get(self, path: Path, *, usage: Hashable) -> PreTrainedTokenizerBase:
        """The tokenizer saved in `path`, shared with models whose tokenizer files are the same
        and whose predictors call it alike (`usage`: the task and max_length)."""
        key = (tokenizer_digest(path), usage)
        with self._lock:
            found = self._loaded.get(key)
            if found is not None:
                return found
            tokenizer = load_tokenizer(path)
            self._loaded[key] = tokenizer
            return tokenizer

    def __len__(self) -> int:
        return len(self._loaded)


TOKENIZERS = TokenizerPool()
