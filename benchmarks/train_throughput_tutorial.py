"""The baseline arm of train_throughput.py: fine-tuning as the usual Hugging Face tutorials do.

AutoTokenizer with padding="max_length" through datasets.map, AutoModelForSequenceClassification,
TrainingArguments with the defaults except output_dir, num_train_epochs, eval_strategy and seed
(--seed, default 42: TrainingArguments' own default), and a Trainer with an accuracy
compute_metrics. Two additions, both outside what is measured: the torch thread count (the same as
the service's worker uses) and a callback that adds up the seconds spent inside training steps,
timed exactly as the service's runner times its own.

    python benchmarks/train_throughput_tutorial.py --model DIR --train train.tsv --dev dev.tsv \
        --epochs 2 --threads 2 --output-dir OUT --result result.json [--seed 42]

Writes its figures as JSON to --result. Nothing here imports the service.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

MAX_LENGTH = 128


class StepTimer(TrainerCallback):
    """Seconds from on_step_begin to on_step_end, summed: forward, backward, clipping, optimizer
    and scheduler steps; not data loading, evaluation or checkpoint saving (as in the service)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.steps = 0
        self._started: float | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self.steps += 1
            self._started = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="local model directory")
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--dev", type=Path, required=True)
    ap.add_argument("--epochs", type=float, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--output-dir", type=Path, required=True)
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=42, help="set_seed and TrainingArguments.seed")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    set_seed(args.seed)  # the classification head's initialisation

    # SST-2's TSV files: no quote handling (texts contain "), and no "null"/"nan" texts as NaN.
    raw = load_dataset(
        "csv",
        data_files={"train": str(args.train), "validation": str(args.dev)},
        delimiter="\t",
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def tokenize_function(examples: dict[str, Any]) -> Any:
        return tokenizer(
            examples["text"], padding="max_length", truncation=True, max_length=MAX_LENGTH
        )

    tokenized = raw.map(tokenize_function, batched=True)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits, labels = eval_pred
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    training_args = TrainingArguments(
        output_dir=str(args.output_dir),
        num_train_epochs=args.epochs,
        eval_strategy="epoch",
        seed=args.seed,
    )
    timer = StepTimer()
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        compute_metrics=compute_metrics,
        callbacks=[timer],
    )
    result = trainer.train()

    train = tokenized["train"]
    evals = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    figures = {
        "train_rows": train.num_rows,
        "dev_rows": tokenized["validation"].num_rows,
        "epochs": args.epochs,
        "torch_threads": torch.get_num_threads(),
        "batch_size": training_args.per_device_train_batch_size,
        "learning_rate": training_args.learning_rate,
        "seed": training_args.seed,
        "global_steps": trainer.state.global_step,
        "step_seconds": timer.seconds,
        "timed_steps": timer.steps,
        # Per pass over the train set: tokens the model sees with and without the padding.
        "real_tokens_per_epoch": int(sum(sum(mask) for mask in train["attention_mask"])),
        "padded_tokens_per_epoch": int(sum(len(ids) for ids in train["input_ids"])),
        "trainer_runtime_s": result.metrics.get("train_runtime"),
        "trainer_samples_per_second": result.metrics.get("train_samples_per_second"),
        "dev_accuracy": evals[-1]["eval_accuracy"] if evals else None,
        "dev_accuracy_by_epoch": [round(e["eval_accuracy"], 4) for e in evals],
        "eval_seconds": sum(e.get("eval_runtime", 0.0) for e in evals),
    }
    args.result.write_text(json.dumps(figures))


if __name__ == "__main__":
    main()
