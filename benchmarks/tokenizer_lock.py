"""What serializing a served tokenizer's calls costs: one shared tokenizer behind its lock
(app/predict/tokenizers.py) against a copy of the tokenizer per request thread (no lock).

In-process, on all-MiniLM-L6-v2 (its tokenizer, and its encoder with a fresh 5-tag NER head: the
cost looked for is tokenizing, not accuracy): --clients threads (default 8) send NER requests whose
text is "Peter lives in Paris" repeated 1-60 times through the task's predict, with the model calls
joined by the real batcher (one model thread, one torch thread), as /predict runs them. NER calls
the tokenizer twice per window batch and its texts are long, so it is the task that tokenizes most
per model token. Rounds alternate the arms (lock first in odd rounds); requests/s are medians over
rounds, and `paired_ratio` is the median of each round's lock/copies ratio. It also measures the
resident memory one more loaded copy of the tokenizer takes.

    python benchmarks/tokenizer_lock.py            # 6 rounds of 200 requests per arm: ~3 min
    python benchmarks/tokenizer_lock.py --quick    # smoke test: 1 round of 24

Prints a line per round and ends with one line of JSON. Nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.train_throughput import MODEL_PACKAGE, versions  # noqa: E402

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
QUICK = {"rounds": 1, "requests": 24}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=200, help="requests per arm and round")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.requests = QUICK["rounds"], QUICK["requests"]
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        print(f"the {MODEL_PACKAGE} package (the base's weights) is missing", file=sys.stderr)
        return 2
    path = Path(spec.origin).parent / "model"

    import torch

    from app.ml.loading import load_model, load_tokenizer, quiet_transformers
    from app.ml.tasks import get_task
    from app.ml.tasks.ner import NerPredictRequest
    from app.predict.batcher import BatchedModel, Batcher
    from app.predict.predictor import plain_runner
    from app.predict.tokenizers import serialized

    quiet_transformers()
    torch.set_num_threads(1)
    task = get_task("ner")
    model = load_model(task, path, label_names=LABELS).eval()
    shared = serialized(load_tokenizer(path))
    gc.collect()
    before = rss_bytes()
    copies = [load_tokenizer(path) for _ in range(4)]
    gc.collect()
    copy_bytes = (rss_bytes() - before) // len(copies)
    del copies

    own = threading.local()

    def thread_copy() -> Any:
        if not hasattr(own, "tokenizer"):
            own.tokenizer = load_tokenizer(path)
        return own.tokenizer

    batcher = Batcher(max_batch_tokens=8192, max_wait_ms=2.0)
    runner = plain_runner("minilm", task, model, shared)
    rng = random.Random(0)
    requests = [
        NerPredictRequest(
            model="m", inputs=[" ".join(["Peter lives in Paris"] * rng.randint(1, 60))]
        )
        for _ in range(args.requests)
    ]

    def predict(tokenizer: Any, request: NerPredictRequest) -> list[Any]:
        return task.predict(
            BatchedModel(batcher, runner),
            tokenizer,
            request,
            label_names=LABELS,
            max_length=128,
            batch_size=32,
            options=task.options_model(),
        )

    def arm(name: str, pool: ThreadPoolExecutor) -> tuple[float, list[Any]]:
        pick = (lambda: shared) if name == "lock" else thread_copy
        started = time.perf_counter()
        answers = list(pool.map(lambda r: predict(pick(), r), requests))
        return len(requests) / (time.perf_counter() - started), answers

    rates: dict[str, list[float]] = {"lock": [], "copies": []}
    try:
        with ThreadPoolExecutor(args.clients) as pool:
            # Warm-up, which also gives every thread its copy before anything is timed.
            _, with_lock = arm("lock", pool)
            _, with_copies = arm("copies", pool)
            same = [[e.label for e in a[0]] for a in with_lock] == [
                [e.label for e in a[0]] for a in with_copies
            ]
            for n in range(args.rounds):
                order = ["lock", "copies"] if n % 2 == 0 else ["copies", "lock"]
                for name in order:
                    rates[name].append(arm(name, pool)[0])
                print(
                    f"round {n + 1}: lock {rates['lock'][-1]:.1f} req/s, "
                    f"copies {rates['copies'][-1]:.1f} req/s",
                    flush=True,
                )
    finally:
        batcher.stop()
    figures = {
        "lock_rps": round(statistics.median(rates["lock"]), 1),
        "copies_rps": round(statistics.median(rates["copies"]), 1),
        "paired_ratio": round(
            statistics.median(a / b for a, b in zip(rates["lock"], rates["copies"], strict=True)),
            3,
        ),
        "same_answers": same,
        "tokenizer_copy_bytes": copy_bytes,
        "rounds": args.rounds,
        "requests": args.requests,
        "clients": args.clients,
        "quick": args.quick,
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "versions": versions(),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
