"""How a sequence classifier turns token vectors into the one vector its head reads.

The transformers `...ForSequenceClassification` heads read the first token (BERT: CLS through
its pooler). A sentence-embedding checkpoint was trained to be read otherwise: all-MiniLM-L6-v2
declares (sentence-transformers' `1_Pooling/config.json`) the mean of its token vectors, and a
linear probe on that mean scores 0.76 SST-2 dev accuracy where one on CLS stops at 0.68 (README
"Method defaults"). A classifier with `"tuneserve_pooling": "mean"` in its config.json is built
by `mean_pooled_class`: the architecture's own body (`AutoModel`, its pooler dropped) and one
linear layer (`classifier`, behind dropout) over the mean of the real tokens' vectors, padding
left out, so that a row answers the same alone and padded in a batch.

The class is this module's code, picked by `model_class` from the config: nothing is loaded
from the model directory but weights (safetensors) and the config.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

# The config.json key that names a classifier's pooling; absent: the architecture's own head.
POOLING_KEY = "tuneserve_pooling"
POOLINGS = ("cls", "mean")


def declared_pooling(path: str | Path) -> str | None:
    """The pooling a sentence-transformers checkpoint declares ("mean" or "cls"), None when it
    declares none (a plain transformers checkpoint) or another kind (max, weighted...)."""
    root = Path(path)
    try:
        modules = json.loads((root / "modules.json").read_text())
        folder = next(
            m.get("path", "") for m in modules if str(m.get("type", "")).endswith("models.Pooling")
        )
        config = json.loads((root / folder / "config.json").read_text())
    except (OSError, ValueError, StopIteration, AttributeError, TypeError):
        return None
    modes = {key for key, value in config.items() if key.startswith("pooling_mode") and value}
    if modes == {"pooling_mode_mean_tokens"}:
        return "mean"
    if modes == {"pooling_mode_cls_token"}:
        return "cls"
    return None


def configured_pooling(path: str | Path) -> str:
    """The pooling a model directory's config.json records ("cls" when it records none)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return "cls"
    value = config.get(POOLING_KEY) if isinstance(config, dict) else None
    return value if value in POOLINGS else "cls"


def _classifier_dropout(config: Any) -> float:
    for name in ("classifier_dropout", "hidden_dropout_prob", "dropout"):
        value = getattr(config, name, None)
        if isinstance(value, float):
            return value
    return 0.1


@cache
def mean_pooled_class(sequence_class: type) -> type:
    """A classifier over the mean of the token vectors, built on the architecture whose sequence
    classifier is `sequence_class` (its pretrained-model base: config, weight names, init)."""
    import torch
    from transformers import AutoModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    pretrained = next(b for b in sequence_class.__mro__[1:] if getattr(b, "base_model_prefix", ""))

    def __init__(self: Any, config: Any) -> None:
        pretrained.__init__(self, config)  # type: ignore[misc]
        body = AutoModel.from_config(config)  # type: ignore[no-untyped-call]
        if getattr(body, "pooler", None) is not None:
            body.pooler = None  # the mean replaces it; its checkpoint weights go unused
        setattr(self, self.base_model_prefix, body)
        self.num_labels = config.num_labels
        self.dropout = torch.nn.Dropout(_classifier_dropout(config))
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self: Any,
        input_ids: Any = None,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        labels: Any = None,
        **kwargs: Any,
    ) -> Any:
        body = getattr(self, self.base_model_prefix)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = body(**inputs).last_hidden_state
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits.view(-1, self.num_labels), labels.view(-1)
            )
        return SequenceClassifierOutput(loss=loss, logits=logits)

    name = f"MeanPooled{sequence_class.__name__}"
    return type(
        name,
        (pretrained,),
        {"__init__": __init__, "forward": forward, "__module__": __name__, "__qualname__": name},
    )
