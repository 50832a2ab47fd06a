"""Prefix tuning reaches the attention layers on transformers releases that renamed the cache."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from app.ml.prefix import PEFT_NAME, accept_prefix, backbone_cache_argument
from tests.tinymodel import build_tiny_model_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("prefix") / "tiny-bert")


@pytest.mark.parametrize("kind", ["classification", "ner"])
def test_a_prefix_trains_and_takes_part(tiny: Path, kind: str) -> None:
    import torch
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    auto, task_type = {
        "classification": (AutoModelForSequenceClassification, TaskType.SEQ_CLS),
        "ner": (AutoModelForTokenClassification, TaskType.TOKEN_CLS),
    }[kind]
    torch.manual_seed(0)
    base = auto.from_pretrained(str(tiny), num_labels=3)
    config = PrefixTuningConfig(task_type=task_type, num_virtual_tokens=4)
    model = get_peft_model(accept_prefix(base), config)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny))
    batch = tokenizer(["good film", "the movie was very good and fun"], padding=True)
    enc = {k: torch.tensor(v) for k, v in batch.items()}
    alone = {k: torch.tensor(v[:1])[:, : sum(batch["attention_mask"][0])] for k, v in batch.items()}

    model.train()
    labels = torch.tensor([0, 2]) if kind == "classification" else torch.ones_like(enc["input_ids"])
    model(**enc, labels=labels).loss.backward()
    prefix = model.prompt_encoder["default"].embedding.weight
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        padded = model(**enc).logits[0]
        single = model(**alone).logits[0]
        # The prefix's keys and values take part: the task model alone answers otherwise.
        plain = type(base).forward(base, **alone).logits[0]
    rows = single.shape[0]
    # The widened attention mask: padding the short text beside a longer one changes nothing.
    assert torch.allclose(padded[:rows], single, atol=1e-5)
    assert not torch.allclose(plain, single, atol=1e-4)


def test_accepting_twice_wraps_once(tiny: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny), num_labels=2)
    accept_prefix(model)
    first = model.forward
    assert PEFT_NAME in inspect.signature(first).parameters
    assert accept_prefix(model).forward is first


def test_a_backbone_without_a_cache_is_named(tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=32
    )
    model = DistilBertForSequenceClassification(config)
    assert backbone_cache_argument(model) is None
    with pytest.raises(ValueError, match="DistilBertForSequenceClassification takes no past keys"):
        accept_prefix(model)
