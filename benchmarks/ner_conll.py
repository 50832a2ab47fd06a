"""Fine-tune all-MiniLM-L6-v2 for NER on CoNLL-2003 through a running service, over HTTP only.

Uploads eng.train and eng.testa unchanged (checking their sentence counts), uploads the first N
sentences of eng.train (cut at a sentence boundary, bytes unchanged) as the train set, fine-tunes
with eng.testa as the validation set, then calls /predict on the raw sentences of eng.testb (tokens
joined with spaces): every entity's offsets must slice its text exactly, and the entities are scored
against testb's gold spans. Prints the figures and ends with one line of JSON.

    .venv/bin/tuneserve up --data-dir /tmp/ner-acc --port 8011 &
    .venv/bin/python benchmarks/ner_conll.py --api http://127.0.0.1:8011 [--sentences 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"
BASE = "sentence-transformers/all-MiniLM-L6-v2"
TYPES = ("LOC", "MISC", "ORG", "PER")


def head_sentences(content: bytes, n: int) -> bytes:
    """The file up to the end of its n-th sentence (-DOCSTART- lines are not sentences)."""
    lines = content.splitlines(keepends=True)
    seen = 0
    in_sentence = False
    for i, line in enumerate(lines):
        cols = line.split()
        if not cols or cols[0] == b"-DOCSTART-":
            if in_sentence:
                seen += 1
                if seen == n:
                    return b"".join(lines[: i + 1])
            in_sentence = False
        else:
            in_sentence = True
    return content


def sentences(path: Path) -> list[list[tuple[str, str]]]:
    """(token, tag) per sentence, tags as in the file (IOB1)."""
    out: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if current:
                out.append(current)
            current = []
            continue
        current.append((cols[0], cols[-1]))
    if current:
        out.append(current)
    return out


def gold_spans(sentence: list[tuple[str, str]]) -> tuple[str, set[tuple[str, int, int]]]:
    """The sentence as text (tokens joined by single spaces) and its entities as char spans.

    IOB1 reading: an I-X or B-X continues an entity of type X unless it is B- (which splits).
    """
    text = ""
    spans: set[tuple[str, int, int]] = set()
    current: list[Any] | None = None  # [type, start, end]
    for token, tag in sentence:
        start = len(text) + (1 if text else 0)
        text = f"{text} {token}" if text else token
        kind = tag[2:] if tag != "O" else None
        if current is not None and (kind != current[0] or tag.startswith("B-")):
            spans.add(tuple(current))  # type: ignore[arg-type]
            current = None
        if kind is not None:
            if current is None:
                current = [kind, start, len(text)]
            else:
                current[2] = len(text)
    if current is not None:
        spans.add(tuple(current))  # type: ignore[arg-type]
    return text, spans


def upload(client: httpx.Client, name: str, content: bytes) -> dict[str, Any]:
    resp = client.post("/v1/datasets", data={"task": "ner"}, files={"file": (name, content)})
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    last = ""
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        line = f"  {job['status']} step {job['progress']['step']}/{job['progress']['total']}"
        if line != last:
            print(line, f"loss {job['train_loss']}", flush=True)
            last = line
        time.sleep(10)


def prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def predict_testb(
    client: httpx.Client, model: str, path: Path, chunk: int
) -> tuple[dict[str, Any], float, int]:
    sents = [gold_spans(s) for s in sentences(path)]
    tp: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    bad_offsets = 0
    start = time.perf_counter()
    for i in range(0, len(sents), chunk):
        part = sents[i : i + chunk]
        resp = client.post(
            "/v1/predict/ner", json={"model": model, "inputs": [text for text, _ in part]}
        )
        resp.raise_for_status()
        for (text, gold), entities in zip(part, resp.json()["predictions"], strict=True):
            predicted = set()
            for e in entities:
                bad_offsets += text[e["start"] : e["end"]] != e["text"]
                predicted.add((e["label"], e["start"], e["end"]))
            n_gold.update(k for k, _, _ in gold)
            n_pred.update(k for k, _, _ in predicted)
            tp.update(k for k, _, _ in gold & predicted)
    seconds = time.perf_counter() - start
    overall = prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    scores = {"f1": overall[2], "precision": overall[0], "recall": overall[1]}
    scores["per_type"] = {k: prf(tp[k], n_pred[k], n_gold[k])[2] for k in TYPES}
    scores["sentences"] = len(sents)
    return scores, seconds, bad_offsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--api", default="http://127.0.0.1:8011")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--method", default="full", choices=("full", "lora"))
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument(
        "--hyperparameters", default="{}", help="JSON merged into the job's hyperparameters"
    )
    args = parser.parse_args()
    # `tuneserve up` prints an admin key on first start; pass it as TUNESERVE_API_KEY.
    key = os.environ.get("TUNESERVE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    client = httpx.Client(base_url=args.api, timeout=600, headers=headers)

    t0 = time.perf_counter()
    train_bytes = (args.data / "eng.train").read_bytes()
    whole = upload(client, "eng.train", train_bytes)
    testa = upload(client, "eng.testa", (args.data / "eng.testa").read_bytes())
    cut = upload(
        client, f"eng.train.first{args.sentences}", head_sentences(train_bytes, args.sentences)
    )
    upload_s = time.perf_counter() - t0
    print(
        f"uploaded in {upload_s:.1f} s: eng.train {whole['num_rows']} sentences, eng.testa "
        f"{testa['num_rows']}, train slice {cut['num_rows']}"
    )
    assert (whole["num_rows"], testa["num_rows"]) == (14_041, 3_250)
    assert cut["num_rows"] == args.sentences

    method = {"type": args.method} if args.method == "full" else {"type": "lora", "r": 16}
    hp = {"epochs": args.epochs, **json.loads(args.hyperparameters)}
    spec = {
        "task": "ner",
        "base_model": BASE,
        "train_dataset": cut["id"],
        "validation_dataset": testa["id"],
        "method": method,
        "hyperparameters": hp,
    }
    resp = client.post("/v1/jobs", json=spec)
    resp.raise_for_status()
    submitted = resp.json()
    print(f"job {submitted['id']}: {submitted['hyperparameters']}")
    start = time.perf_counter()
    job = wait(client, submitted["id"])
    train_s = time.perf_counter() - start
    if job["status"] != "succeeded":
        raise SystemExit(f"job ended {job['status']}: {job.get('error')}")
    m = job["metrics"]
    per_type = {k: round(v["f1"], 4) for k, v in m["per_type"].items()}
    print(
        f"training wall time {train_s:.0f} s (submit to succeeded); eng.testa entity F1 "
        f"{m['f1']:.4f} (P {m['precision']:.4f}, R {m['recall']:.4f}), word accuracy "
        f"{m['accuracy']:.4f}; F1 per type {per_type}"
    )

    testb, predict_s, bad = predict_testb(client, job["model_id"], args.data / "eng.testb", 200)
    print(
        f"/predict on {testb['sentences']} raw eng.testb sentences in {predict_s:.1f} s: entity "
        f"F1 {testb['f1']:.4f} against gold spans; entities whose offsets do not slice: {bad}"
    )
    print(
        json.dumps(
            {
                "method": args.method,
                "train_sentences": cut["num_rows"],
                "hyperparameters": job["hyperparameters"],
                "job": job["id"],
                "model": job["model_id"],
                "train_wall_s": round(train_s, 1),
                "testa_f1": round(m["f1"], 4),
                "testa_precision": round(m["precision"], 4),
                "testa_recall": round(m["recall"], 4),
                "testa_accuracy": round(m["accuracy"], 4),
                "testa_f1_per_type": per_type,
                "testb_predict_f1": round(testb["f1"], 4),
                "testb_predict_f1_per_type": {k: round(v, 4) for k, v in testb["per_type"].items()},
                "testb_offsets_not_slicing": bad,
                "predict_s": round(predict_s, 1),
                "upload_s": round(upload_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
