"""How far can a span head alone go on all-MiniLM-L6-v2's frozen token vectors? Outside the
service: the SQuAD slice of benchmarks/method_defaults.py (the first 1,000 questions of SQuAD v1.1
dev's first articles to train, the last 5 articles to score), every question and context encoded
once by the frozen encoder (the embeddings and all six layers' outputs kept), then linear start /
end heads trained with Adam on the vectors of one layer or of several concatenated, and scored
(SQuAD F1, the best span of at most 30 tokens in the first 384-token window) beside the service's
word-overlap baseline on the same questions. Ends with one line of JSON.

    .venv/bin/python benchmarks/qa_probe_ceiling.py      # about 8 minutes on 2 CPU cores, 5 GB

`head_only` on QA is exactly the first row (layer 6, the head on the last layer's vectors); the
other rows are probes it could be made into, for the record of what this checkpoint allows.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.method_defaults import squad_files  # noqa: E402
from benchmarks.qa_squad import questions  # noqa: E402

MAX_LENGTH = 384
MAX_ANSWER_TOKENS = 30
PROBES = ([6], [5, 6], [4, 5, 6], [0, 1, 2, 3, 4, 5, 6])


def encode(model: Any, tokenizer: Any, rows: list[Any]) -> dict[str, Any]:
    """Every layer's vectors (fp16), the context-token mask, offsets and the gold token span."""
    import torch

    vectors, masks, offsets, starts, ends = [], [], [], [], []
    for i in range(0, len(rows), 16):
        chunk = rows[i : i + 16]
        enc = tokenizer(
            [r["question"] for r in chunk],
            [r["context"] for r in chunk],
            truncation="only_second",
            max_length=MAX_LENGTH,
            padding="max_length",
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offset = enc.pop("offset_mapping")
        with torch.inference_mode():
            hidden = model(**enc, output_hidden_states=True).hidden_states
        vectors.append(torch.cat(hidden, dim=-1).half())
        context = (enc["token_type_ids"] == 1) & (enc["attention_mask"] == 1)
        masks.append(context)
        offsets.append(offset)
        for j, row in enumerate(chunk):
            first, last = row["start"], row["start"] + len(row["golds"][0])
            inside = [
                k
                for k in range(MAX_LENGTH)
                if context[j, k] and offset[j, k, 1] > first and offset[j, k, 0] < last
            ]
            starts.append(inside[0] if inside else -1)  # -1: the answer is past the window
            ends.append(inside[-1] if inside else -1)
    return {
        "vectors": torch.cat(vectors),
        "mask": torch.cat(masks),
        "offsets": torch.cat(offsets),
        "start": torch.tensor(starts),
        "end": torch.tensor(ends),
    }


def probe(
    train: dict[str, Any],
    test: dict[str, Any],
    rows: list[Any],
    layers: list[int],
    lr: float,
    epochs: int,
    hidden: int,
) -> float:
    import torch

    from app.ml.tasks.qa_postprocess import squad_scores

    torch.manual_seed(0)
    columns = torch.cat([torch.arange(n * hidden, (n + 1) * hidden) for n in layers])
    head = torch.nn.Linear(len(columns), 2)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    usable = torch.nonzero(train["start"] >= 0).squeeze(1)
    for _ in range(epochs):
        for batch in usable[torch.randperm(len(usable))].split(8):
            logits = head(train["vectors"][batch][:, :, columns].float())
            logits = logits.masked_fill(~train["mask"][batch].unsqueeze(-1), -1e4)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :, 0], train["start"][batch]
            ) + torch.nn.functional.cross_entropy(logits[:, :, 1], train["end"][batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    allowed = torch.triu(torch.ones(MAX_LENGTH, MAX_LENGTH, dtype=torch.bool))
    allowed &= ~torch.triu(allowed, diagonal=MAX_ANSWER_TOKENS)
    answers = []
    with torch.inference_mode():
        for i, row in enumerate(rows):
            logits = head(test["vectors"][i][:, columns].float())
            start = logits[:, 0].masked_fill(~test["mask"][i], -1e4)
            end = logits[:, 1].masked_fill(~test["mask"][i], -1e4)
            spans = (start[:, None] + end[None, :]).masked_fill(~allowed, -1e9)
            s, e = divmod(int(spans.argmax()), MAX_LENGTH)
            offset = test["offsets"][i]
            answers.append(row["context"][int(offset[s, 0]) : int(offset[e, 1])])
    return float(squad_scores(answers, [r["golds"] for r in rows])["f1"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", nargs="+", type=float, default=[3e-3, 1e-2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: 40 questions each, 1 epoch, 2 probes"
    )
    args = ap.parse_args()
    probes: tuple[list[int], ...] = PROBES[::3] if args.quick else PROBES
    import torch
    from transformers import AutoModel, AutoTokenizer

    from app.ml.tasks.qa_baseline import baseline_answer
    from app.ml.tasks.qa_postprocess import squad_scores
    from benchmarks.train_throughput import MODEL_PACKAGE

    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        print(f"the {MODEL_PACKAGE} package (the base's weights) is missing", file=sys.stderr)
        return 2
    base_dir = Path(spec.origin).parent / "model"
    torch.set_num_threads(2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train_file, test_file = squad_files(Path(tmp))
        train_rows, test_rows = questions(train_file), questions(test_file)
    if args.quick:
        train_rows, test_rows, args.epochs, args.rates = train_rows[:40], test_rows[:40], 1, [1e-2]
    baseline = float(
        squad_scores(
            [baseline_answer(r["question"], r["context"]) for r in test_rows],
            [r["golds"] for r in test_rows],
        )["f1"]
    )
    print(
        f"{len(train_rows)} training questions, {len(test_rows)} scored; baseline F1 {baseline:.3f}"
    )
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModel.from_pretrained(base_dir).eval()
    train, test = encode(model, tokenizer, train_rows), encode(model, tokenizer, test_rows)
    print(f"encoded in {time.perf_counter() - started:.0f} s", flush=True)
    results = []
    for layers in probes:
        for lr in args.rates:
            f1 = probe(
                train, test, test_rows, list(layers), lr, args.epochs, model.config.hidden_size
            )
            results.append({"layers": list(layers), "learning_rate": lr, "f1": round(f1, 4)})
            print(f"layers {list(layers)!s:22} lr {lr:g}: F1 {f1:.3f}", flush=True)
    best = max(r["f1"] for r in results)
    print(
        json.dumps(
            {
                "benchmark": "qa_probe_ceiling",
                "baseline_f1": round(baseline, 4),
                "best_probe_f1": best,
                "beats_baseline": best > baseline,
                "probes": results,
                "epochs": args.epochs,
                "questions": {"trained": len(train_rows), "scored": len(test_rows)},
                "wall_s": round(time.perf_counter() - started, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
