"""Validation splits and LoRA module choice, without training."""

from __future__ import annotations

from collections import Counter

import datasets

from worker.training.data import hold_out
from worker.training.heads import head_modules


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


def resolved(**values: object) -> object:
    """Hyperparameters as a worker resolves them (every "auto" made concrete)."""
    from app.job.schemas import ResolvedHyperparameters

    defaults = {
        "epochs": 3,
        "learning_rate": 1e-3,
        "batch_size": 32,
        "max_length": 128,
        "mixed_precision": "no",
    }
    return ResolvedHyperparameters.model_validate({**defaults, **values})


def test_training_arguments_group_by_length_and_checkpoint_per_epoch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from worker.training.data import LENGTH_COLUMN
    from worker.training.plan import _training_args

    hp = resolved(warmup_ratio=0.1, lr_scheduler="cosine")
    args = _training_args(hp, seed=11, output_dir=tmp_path, steps=1000)  # type: ignore[arg-type]
    assert args.train_sampling_strategy == "group_by_length"
    assert args.length_column_name == LENGTH_COLUMN
    assert args.save_strategy == "epoch" and args.eval_strategy == "epoch"
    assert args.save_total_limit == 2
    assert args.report_to in ("none", [], ["none"])
    assert (args.seed, args.learning_rate, args.warmup_steps) == (11, 1e-3, 0.1)
    assert args.lr_scheduler_type == "cosine" and args.logging_steps == 1
    assert not args.load_best_model_at_end and args.label_smoothing_factor == 0
    assert not args.bf16 and not args.fp16


def test_checkpoint_every_maps_to_save_strategy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from worker.training.plan import _training_args

    def args(every: object) -> object:
        hp = resolved(checkpoint_every=every)
        return _training_args(hp, seed=1, output_dir=tmp_path, steps=10)  # type: ignore[arg-type]

    steps = args(25)
    assert (steps.save_strategy, steps.save_steps) == ("steps", 25)  # type: ignore[attr-defined]
    assert args("no").save_strategy == "no"  # type: ignore[attr-defined]


def test_early_stopping_evaluates_at_every_checkpoint_and_keeps_the_best(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from worker.training.plan import _training_args

    hp = resolved(checkpoint_every=25, early_stopping={"metric": "accuracy"}, label_smoothing=0.1)
    steps = _training_args(hp, seed=1, output_dir=tmp_path, steps=100)  # type: ignore[arg-type]
    assert (steps.eval_strategy, steps.eval_steps, steps.save_steps) == ("steps", 25, 25)
    assert steps.load_best_model_at_end and steps.metric_for_best_model == "accuracy"
    assert steps.greater_is_better and steps.label_smoothing_factor == 0.1
    assert steps.restore_callback_states_from_checkpoint  # the patience count survives a resume

    hp = resolved(early_stopping={"metric": "loss", "patience": 1})
    epochs = _training_args(hp, seed=1, output_dir=tmp_path, steps=100)  # type: ignore[arg-type]
    assert (epochs.eval_strategy, epochs.save_strategy) == ("epoch", "epoch")
    assert epochs.metric_for_best_model == "loss" and not epochs.greater_is_better
