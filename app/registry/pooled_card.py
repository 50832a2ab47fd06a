"""The README.md of a downloaded classifier over the mean of its token vectors.

Such a model (app/ml/pooling.py) is Tuneserve's own class: `AutoModelForSequenceClassification`
would load its weights into a head that reads the first token through a fresh pooler, and answer
otherwise, with nothing but a load warning. Its archive therefore carries a README.md whose code
loads it with transformers and torch alone and scores what /predict answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.db.models import Model
from app.ml.pooling import configured_pooling
from app.registry.adapter_card import README

CODE = '''\
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

where = "./{folder}"
tokenizer = AutoTokenizer.from_pretrained(where)
config = AutoConfig.from_pretrained(where)
labels = [config.id2label[i] for i in range(config.num_labels)]


class MeanPooledClassifier(torch.nn.Module):
    """The encoder, then one linear layer over the mean of the real tokens' vectors."""

    def __init__(self) -> None:
        super().__init__()
        self.config = config
        # The encoder's weights; transformers warns that a pooler is missing: it is not used.
        self.body = AutoModel.from_pretrained(where)
        weights = load_file(f"{{where}}/model.safetensors")
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.classifier.load_state_dict(
            {{"weight": weights["classifier.weight"], "bias": weights["classifier.bias"]}}
        )

    def forward(self, input_ids, attention_mask, **inputs):
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, **inputs
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return torch.nn.functional.linear(pooled, self.classifier.weight, self.classifier.bias)


model = MeanPooledClassifier().eval()


def predict(texts: list[str]) -> list[dict[str, float]]:
    batch = tokenizer(
        texts, truncation=True, max_length={max_length}, padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        probs = model(**batch).softmax(dim=-1)
    return [{{labels[i]: float(p) for i, p in enumerate(row)}} for row in probs]
'''

TEXT = """# {model_id}

A {task} model of Tuneserve ({method}) whose head reads the **mean of the token vectors**, as
its base checkpoint pools a sentence (`"tuneserve_pooling": "mean"` in config.json), not the
first token. `AutoModelForSequenceClassification.from_pretrained` would load these weights into a
head that reads the first token through a pooler it makes afresh, and answer otherwise. Load it
with transformers and torch as below (the folder extracted beside you); `predict` gives the
scores `/v1/predict/classification` answers.

```python
{code}```
"""


def pooled_files(model: Model, root: Path, meta: dict[str, Any]) -> dict[str, bytes]:
    """{README.md: how to load it} for a classifier over the mean of its token vectors; nothing
    for any other model."""
    if not (root / "config.json").is_file() or configured_pooling(root) != "mean":
        return {}
    max_length = meta.get("max_length") or 512  # as /predict reads it (served_settings)
    method = json.dumps((meta.get("method") or {}).get("type", model.method))
    code = CODE.format(folder=model.id, max_length=int(max_length))
    text = TEXT.format(model_id=model.id, task=model.task, method=method, code=code)
    return {README: text.encode()}
