"""Training data: load rows, hold out a seeded stratified split, tokenize without padding."""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.core.config import Settings
from app.core.errors import InvalidInput
from app.db.models import Dataset

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from app.ml.tasks import TaskSpec

# Precomputed example lengths for length-grouped batching (TrainingArguments.length_column_name).
LENGTH_COLUMN = "length"


def load_rows(settings: Settings, dataset_row: Dataset) -> datasets.Dataset:
    """The stored dataset's rows with canonical columns (kept behind one name tests can replace)."""
    from app.dataset.service import load_rows as load_dataset_rows

    return load_dataset_rows(settings, dataset_row)


@dataclass
class Split:
    train: datasets.Dataset
    validation: datasets.Dataset
    # How the validation set came about: "given", "stratified" or "random".
    kind: str


def hold_out(
    ds: datasets.Dataset, *, fraction: float, seed: int, stratify_column: str | None
) -> Split:
    """A seeded train/validation split, stratified when every class can spare a row."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    n_val = max(1, round(ds.num_rows * fraction))
    if ds.num_rows - n_val < 1:
        raise InvalidInput(
            f"train_dataset has {ds.num_rows} rows: too few to hold out a validation split",
            field="train_dataset",
        )
    indices = np.arange(ds.num_rows)
    labels = ds[stratify_column] if stratify_column in ds.column_names else None
    kind = "stratified" if labels is not None else "random"
    try:
        train_idx, val_idx = train_test_split(
            indices, test_size=n_val, random_state=seed, stratify=labels
        )
    except ValueError:  # a class with a single row, or fewer held-out rows than classes
        kind = "random"
        train_idx, val_idx = train_test_split(indices, test_size=n_val, random_state=seed)
    return Split(ds.select(sorted(train_idx)), ds.select(sorted(val_idx)), kind)


def model_input_columns(model: Any) -> set[str]:
    """Argument names of the model's forward (the columns a batch may carry)."""
    return set(inspect.signature(model.forward).parameters)


def tokenize(
    ds: datasets.Dataset,
    encode: Callable[[dict[str, list[Any]]], dict[str, list[Any]]],
    *,
    keep: Iterable[str],
    length_of: str,
) -> datasets.Dataset:
    """Features for the model (unpadded) plus a length column; in memory, never cached to disk."""
    import datasets as hf

    hf.disable_progress_bars()
    # A fixed fingerprint skips hashing the closure (and the tokenizer inside it) with dill.
    out = ds.map(
        encode,
        batched=True,
        remove_columns=ds.column_names,
        keep_in_memory=True,
        load_from_cache_file=False,
        new_fingerprint=secrets.token_hex(8),
    )
    wanted = set(keep)
    out = out.remove_columns([c for c in out.column_names if c not in wanted])
    return out.map(
        lambda batch: {LENGTH_COLUMN: [len(x) for x in batch[length_of]]},
        batched=True,
        keep_in_memory=True,
        load_from_cache_file=False,
        new_fingerprint=secrets.token_hex(8),
    )


class DropColumnsCollator:
    """Removes bookkeeping columns (lengths) before the real collator pads the batch."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], Any], drop: Iterable[str]) -> None:
        self.inner = inner
        self.drop = frozenset(drop)

    def __call__(self, features: list[Mapping[str, Any]]) -> Any:
        return self.inner([{k: v for k, v in f.items() if k not in self.drop} for f in features])


def make_collator(task: TaskSpec, tokenizer: PreTrainedTokenizerBase) -> DropColumnsCollator:
    """The task's collator; the length column and the eval-only columns are dropped first."""
    return DropColumnsCollator(
        task.data_collator(tokenizer), [LENGTH_COLUMN, *task.eval_only_columns]
    )
