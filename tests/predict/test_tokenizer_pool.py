"""Served models share a tokenizer only when its files and the way it is called are the same."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import pytest

from app.predict.tokenizers import TokenizerPool, tokenizer_digest
from tests.tinymodel import build_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-bert")


def test_same_files_and_usage_share_one_tokenizer(tiny_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    (copy / "tuneserve.json").write_text('{"another": "model"}')  # not the tokenizer's
    pool = TokenizerPool()
    first = pool.get(tiny_dir, usage=("classification", 128))
    assert pool.get(copy, usage=("classification", 128)) is first
    # Called otherwise (truncation is state of the object): a tokenizer of its own.
    assert pool.get(copy, usage=("classification", 64)) is not first
    assert pool.get(copy, usage=("ner", 128)) is not first
    # Other tokenizer files: its own too.
    vocab = next(f for f in copy.iterdir() if f.name.startswith(("vocab", "tokenizer.json")))
    vocab.write_text(vocab.read_text() + "\n")
    assert tokenizer_digest(copy) != tokenizer_digest(tiny_dir)
    assert pool.get(copy, usage=("classification", 128)) is not first


def test_a_tokenizer_no_predictor_holds_is_dropped(tiny_dir: Path) -> None:
    pool = TokenizerPool()
    held = pool.get(tiny_dir, usage=("classification", 128))
    assert len(pool) == 1
    del held
    gc.collect()
    assert len(pool) == 0
