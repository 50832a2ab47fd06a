"""What an adapter's download says about its base: an adapter_config.json whose
base_model_name_or_path a user can load, and a README.md on loading it with transformers and peft.

On the server, base_model_name_or_path is a path on the server's disk (the catalog base's
directory) and README.md is peft's empty model card; the archive replaces both. A base is a Hub id
(transformers fetches it by name), a `local/<name>` directory of the server's (no public name: the
user needs the operator's copy), or a registered model (`model:<id>`: its own download).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.basemodel.service import LOCAL_PREFIX, PACKAGED_MODELS
from app.db.models import Model
from app.db.session import get_by_id
from app.ml.lineage import PROMPT_LEARNING, parent_id
from app.ml.tasks import get_task

ADAPTER_CONFIG = "adapter_config.json"
README = "README.md"


@dataclass(frozen=True)
class BaseNote:
    """An adapter's base, for the archive: its name there, and how a user gets and loads it."""

    # adapter_config.json's base_model_name_or_path: a Hub id, or a path relative to the folder
    # the archive is extracted in ("./..." so that a missing folder is never taken for a Hub id).
    load_as: str
    # What it is and where to get it (Markdown).
    text: str
    # Python lines that leave the base model in `base`.
    code: str


def _from_pretrained(auto: str, where: str, labels: list[str]) -> str:
    if not labels:
        return f"base = {auto}.from_pretrained({json.dumps(where)})"
    return (
        f"labels = {json.dumps(labels, ensure_ascii=False)}\n"
        f"base = {auto}.from_pretrained(\n"
        f"    {json.dumps(where)},\n"
        "    num_labels=len(labels),\n"
        "    id2label=dict(enumerate(labels)),\n"
        "    label2id={name: i for i, name in enumerate(labels)},\n"
        ")"
    )


def _registered_base(
    session: Session, model: Model, parent: str, root: str, auto: str, labels: list[str]
) -> BaseNote:
    row = get_by_id(session, Model, parent)
    where = f"./{parent}"
    get_it = (
        f"Download it too (`GET /v1/models/{parent}/download`, or `tuneserve models download "
        f"{parent}`) and extract it beside this folder, as `{where}`."
    )
    lineage = f"its lineage starts at the catalog base `{root}`"
    if row is None or row.tenant_id != model.tenant_id:
        text = (
            f"`model:{parent}`, the registered Tuneserve model `{parent}` ({lineage}), which this "
            "server no longer has: this adapter cannot be loaded without it."
        )
        return BaseNote(where, text, f"# model {parent}, which is gone\nbase = ...")
    if row.artifact == "adapter":
        text = (
            f"`model:{parent}`, the registered Tuneserve model `{parent}`: itself an adapter "
            f"({lineage}). {get_it} Load it as its own README.md says and merge it into its "
            "weights (`merge_and_unload()`): the merged model is this adapter's base."
        )
        code = f"# `parent`: model {parent}, loaded as {where}/README.md says\n"
        code += "base = parent.merge_and_unload()"
        return BaseNote(where, text, code)
    text = (
        f"`model:{parent}`, the registered Tuneserve model `{parent}` (artifact `{row.artifact}`: "
        f"a whole transformers model; {lineage}). {get_it}"
    )
    return BaseNote(where, text, _from_pretrained(auto, where, labels))


def describe_base(session: Session, model: Model, meta: dict[str, Any]) -> BaseNote:
    """The base an adapter applies to, as its metadata records it."""
    recorded: dict[str, Any] = meta.get("base_model") or {}
    base_id = str(recorded.get("id") or model.base_model)
    auto = get_task(model.task).auto_model_class_name
    labels = [str(label) for label in meta.get("label_names") or model.label_names]
    parent = parent_id(base_id)
    if parent is not None:
        root = str(recorded.get("root") or "?")
        return _registered_base(session, model, parent, root, auto, labels)
    if base_id.startswith(LOCAL_PREFIX):
        where = f"./{base_id}"
        text = (
            f"`{base_id}`: a model directory named `{base_id[len(LOCAL_PREFIX) :]}` in the "
            "Tuneserve server's local base-model folder (`TUNESERVE_LOCAL_MODELS_DIR`). It is not "
            "on the Hugging Face Hub and Tuneserve's API does not serve it: get a copy of that "
            f"directory from whoever runs the server and put it at `{where}`."
        )
        return BaseNote(where, text, _from_pretrained(auto, where, labels))
    packaged = PACKAGED_MODELS.get(base_id)
    text = f"`{base_id}`, the Hugging Face Hub model of that id"
    if packaged is not None:
        text += f" (Tuneserve trains on a copy of it packaged as the `{packaged[0]}` package)"
    text += ": transformers downloads it by that id."
    return BaseNote(base_id, text, _from_pretrained(auto, base_id, labels))


def adapter_readme(
    model: Model, meta: dict[str, Any], config: dict[str, Any], base: BaseNote
) -> str:
    """README.md of an adapter's archive: its base, and how to load both."""
    auto = get_task(model.task).auto_model_class_name
    peft_type = str(config.get("peft_type") or "peft")
    method = str((meta.get("method") or {}).get("type") or model.method)
    here = f"./{model.id}"
    max_length = meta.get("max_length") or 512
    lines = [
        f"# {model.id}",
        "",
        f"A {method} adapter ({peft_type}) for {model.task}, trained by Tuneserve (job "
        f"`{model.job_id}`). This folder holds the peft adapter ({ADAPTER_CONFIG}, its weights), "
        "the tokenizer and Tuneserve's metadata (tuneserve.json: labels, metrics, "
        "hyperparameters). It is not a whole model: it applies to its base model.",
        "",
        "## Base model",
        "",
        base.text,
        "",
        f"{ADAPTER_CONFIG}'s `base_model_name_or_path` is `{base.load_as}`. On the server it is a "
        f"path on the server's disk, and {README} is peft's empty model card: the archive's "
        "copies of these two files are rewritten, so tuneserve.json's sha256 of them are the "
        "stored files'.",
        "",
    ]
    if meta.get("pooling") == "mean":
        lines += _mean_pooled_base(model)
    else:
        lines += [
            "## Loading it with transformers and peft",
            "",
            "```python",
            "from peft import PeftModel",
            f"from transformers import {auto}, AutoTokenizer",
            "",
            base.code,
            f"model = PeftModel.from_pretrained(base, {json.dumps(here)}).eval()",
            f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(here)})",
            "```",
            "",
        ]
    lines += [
        "Paths are relative to the folder the archive was extracted in. Tuneserve fed the model "
        f"at most {max_length} tokens per input (`truncation=True, max_length={max_length}`).",
    ]
    saved = [str(m) for m in config.get("modules_to_save") or ()]
    if saved:
        lines.append(
            "The task head trained with the adapter is saved in it (`modules_to_save`: "
            f"{', '.join(dict.fromkeys(saved))}) and replaces the head the base comes with."
        )
    if peft_type not in PROMPT_LEARNING:
        lines.append("`model.merge_and_unload()` folds the adapter into the base's weights.")
    return "\n".join(lines) + "\n"


def adapter_files(
    session: Session, model: Model, root: Path, meta: dict[str, Any]
) -> dict[str, bytes]:
    """The files an adapter's archive replaces: adapter_config.json naming a loadable base, and
    a README.md saying which base and how to load it."""
    config: dict[str, Any] = json.loads((root / ADAPTER_CONFIG).read_text())
    base = describe_base(session, model, meta)
    config["base_model_name_or_path"] = base.load_as
    return {
        ADAPTER_CONFIG: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
        README: adapter_readme(model, meta, config, base).encode(),
    }


def _mean_pooled_base(model: Model) -> list[str]:
    """The loading section of an adapter whose base's head reads the mean of the token vectors
    (app/ml/pooling.py): no stock class loads that base, so the card says what does."""
    job = json.dumps(
        {"task": model.task, "base_model": f"model:{model.id}", "method": {"type": "export"}}
    )
    return [
        "## Loading it elsewhere",
        "",
        'Its base\'s head reads the **mean of the token vectors** (`"tuneserve_pooling": '
        '"mean"` in the base\'s config.json), not the first token: '
        "`AutoModelForSequenceClassification` would load the base as a head over the first "
        "token, and this adapter on it would answer otherwise. Tuneserve serves it as trained. "
        f"To run it without Tuneserve, export it (a job `{job}`): the adapter is merged into its "
        "base and the ONNX graph runs in ONNX Runtime alone, with /predict's scores.",
        "",
    ]
