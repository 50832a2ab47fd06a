"""Validation splits and LoRA module choice, without training."""

from __future__ import annotations

from collections import Counter

import datasets

from worker.training.data import hold_out
from worker.training.lora import head_modules


def _rows(counts: dict[str, int]) -> datasets.Dataset:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(len(labels))], "label": labels}
    )


def test_hold_out_is_stratified_and_seeded() -> None:
    ds = _rows({"a": 60, "b": 30, "c": 10})
    split = hold_out(ds, fraction=0.1, seed=3, stratify_column="label")
    assert split.kind == "stratified"
    assert Counter(split.validation["label"]) == {"a": 6, "b": 3, "c": 1}
    assert split.train.num_rows == 90
    again = hold_out(ds, fraction=0.1, seed=3, stratify_column="label")
    assert again.validation["text"] == split.validation["text"]
    other = hold_out(ds, fraction=0.1, seed=4, stratify_column="label")
    assert other.validation["text"] != split.validation["text"]


def test_hold_out_falls_back_when_a_class_is_too_small() -> None:
    ds = _rows({"a": 10, "b": 9, "rare": 1})
    split = hold_out(ds, fraction=0.1, seed=0, stratify_column="label")
    assert split.kind == "random"
    assert split.train.num_rows + split.validation.num_rows == 20
    assert set(split.train["text"]).isdisjoint(split.validation["text"])


def test_hold_out_without_a_stratify_column() -> None:
    split = hold_out(_rows({"a": 5, "b": 5}), fraction=0.2, seed=0, stratify_column=None)
    assert (split.kind, split.validation.num_rows) == ("random", 2)


def test_head_modules_are_the_parents_of_new_weights() -> None:
    assert head_modules(["classifier.weight", "classifier.bias"]) == ["classifier"]
    assert head_modules(["classifier.out_proj.weight", "classifier.dense.bias"]) == [
        "classifier.dense",
        "classifier.out_proj",
    ]


def test_training_arguments_group_by_length_and_checkpoint_per_epoch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from app.job.schemas import Hyperparameters, JobSpec
    from worker.training.data import LENGTH_COLUMN
    from worker.training.runner import _training_args

    spec = JobSpec(
        method={"type": "lora"},  # type: ignore[arg-type]
        hyperparameters=Hyperparameters(warmup_ratio=0.1, lr_scheduler="cosine"),
        seed=11,
    )
    args = _training_args(SimpleNamespace(spec=spec), output_dir=tmp_path, steps=1000)  # type: ignore[arg-type]
    assert args.train_sampling_strategy == "group_by_length"
    assert args.length_column_name == LENGTH_COLUMN
    assert args.save_strategy == "epoch" and args.eval_strategy == "epoch"
    assert args.save_total_limit == 2
    assert args.report_to in ("none", [], ["none"])
    assert (args.seed, args.learning_rate, args.warmup_steps) == (11, 1e-3, 0.1)
    assert args.lr_scheduler_type == "cosine" and args.logging_steps == 20


def test_checkpoint_every_maps_to_save_strategy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from app.job.schemas import Hyperparameters, JobSpec
    from worker.training.runner import _training_args

    def args(every: object) -> object:
        hp = Hyperparameters(checkpoint_every=every)  # type: ignore[arg-type]
        spec = JobSpec(method={"type": "full"}, hyperparameters=hp, seed=1)  # type: ignore[arg-type]
        return _training_args(SimpleNamespace(spec=spec), output_dir=tmp_path, steps=10)  # type: ignore[arg-type]

    steps = args(25)
    assert (steps.save_strategy, steps.save_steps) == ("steps", 25)  # type: ignore[attr-defined]
    assert args("no").save_strategy == "no"  # type: ignore[attr-defined]
