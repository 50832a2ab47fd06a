"""Served models share a tokenizer when its files are the same; its calls run one at a time."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import pytest

from app.ml.loading import load_tokenizer
from app.predict.tokenizers import SerializedTokenizer, TokenizerPool, serialized, tokenizer_digest
from tests.tinymodel import build_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-bert")


def test_same_files_share_one_tokenizer(tiny_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    (copy / "tuneserve.json").write_text('{"another": "model"}')  # not the tokenizer's
    pool = TokenizerPool()
    first = pool.get(tiny_dir)
    # Models of any task and max_length call it their own way: its calls are serialized.
    assert isinstance(first, SerializedTokenizer)
    assert pool.get(copy) is first
    # Other tokenizer files: its own.
    vocab = next(f for f in copy.iterdir() if f.name.startswith(("vocab", "tokenizer.json")))
    vocab.write_text(vocab.read_text() + "\n")
    assert tokenizer_digest(copy) != tokenizer_digest(tiny_dir)
    assert pool.get(copy) is not first


def test_a_tokenizer_no_predictor_holds_is_dropped(tiny_dir: Path) -> None:
    pool = TokenizerPool()
    held = pool.get(tiny_dir)
    assert len(pool) == 1
    del held
    gc.collect()
    assert len(pool) == 0


def test_a_serialized_tokenizer_answers_like_the_tokenizer(tiny_dir: Path) -> None:
    raw = load_tokenizer(tiny_dir)
    wrapped = serialized(raw)
    # One wrapper (one lock) per tokenizer object, whoever wraps it.
    assert serialized(raw) is wrapped and serialized(wrapped) is wrapped
    texts = ["good film", "a very dull and boring plot"]
    assert wrapped(texts, padding=True)["input_ids"] == raw(texts, padding=True)["input_ids"]
    assert wrapped.pad({"input_ids": [[2, 5], [2]]})["input_ids"] == [[2, 5], [2, 0]]
    ids = raw("good film")["input_ids"]
    assert wrapped.decode(ids) == raw.decode(ids) == "[CLS] good film [SEP]"
    assert wrapped.is_fast and wrapped.pad_token_id == raw.pad_token_id
    assert wrapped.model_input_names == raw.model_input_names and len(wrapped) == len(raw)


def test_a_serialized_tokenizer_keeps_its_settings_to_each_call(tiny_dir: Path) -> None:
    wrapped = serialized(load_tokenizer(tiny_dir))
    with pytest.raises(AttributeError, match="padding_side: a served tokenizer is shared"):
        wrapped.padding_side = "left"
    # The Rust tokenizer, whose enable_padding/enable_truncation would bypass the lock.
    with pytest.raises(AttributeError, match="backend_tokenizer"):
        wrapped.backend_tokenizer  # noqa: B018
    assert wrapped.padding_side == "right"
