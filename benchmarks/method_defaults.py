"""Does every fine-tuning method learn with the service's defaults? Trains all-MiniLM-L6-v2 with
each method on a small real slice of each task, through the API of a fresh `tuneserve up`, and
prints the model's metric beside the task's trivial baseline (computed by the service on the same
validation rows) and the floor the method must reach. Ends with one line of JSON.

    .venv/bin/python benchmarks/method_defaults.py                         # every task, seed 0
    .venv/bin/python benchmarks/method_defaults.py --task classification --seeds 0 1
    .venv/bin/python benchmarks/method_defaults.py --task ner --method ia3 \
        --hp '{"learning_rate": 1e-2}' --hp '{"learning_rate": 3e-2}'     # a sweep

The slices (nothing is written to the repository):
- classification: 1,500 SST-2 train rows drawn with random.Random(0), `"epochs": 2`, the first 300
  dev rows as the validation set; accuracy is also measured through /predict on those rows.
- ner: the first 1,000 sentences of CoNLL-2003 eng.train, eng.testa as the validation set.
- qa: SQuAD v1.1 dev split by article: the first 1,000 questions of the first articles train, the
  last 5 articles (no shared context) are the validation set.
Every other setting is the service's default unless --hp overrides it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.ner_conll import head_sentences  # noqa: E402
from benchmarks.serve_throughput import running_service  # noqa: E402
from benchmarks.train_throughput import BASE, wait_for_job  # noqa: E402

DATA = REPO.parent / "shared" / "data"
METHODS = ("full", "lora", "ia3", "adalora", "prefix_tuning", "head_only")
# The floors each method must reach with its defaults on these slices (head_only's apart).
FLOORS = {
    "classification": ("accuracy", 0.75, 0.70),
    "ner": ("f1", 0.60, 0.40),
    "qa": ("f1", 0.25, None),  # head_only: better than the baseline
}
QA_TRAIN_QUESTIONS = 1000
QA_HELDOUT_ARTICLES = 5


def sst2_files(out: Path) -> tuple[Path, Path]:
    lines = (DATA / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    rows = [lines[0], *random.Random(0).sample(lines[1:], 1500)]
    dev = (DATA / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[:301]
    (out / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (out / "dev.tsv").write_text("\n".join(dev) + "\n", encoding="utf-8")
    return out / "train.tsv", out / "dev.tsv"


def conll_files(out: Path) -> tuple[Path, Path]:
    head = head_sentences((DATA / "conll2003" / "eng.train").read_bytes(), 1000)
    (out / "train.conll").write_bytes(head)
    return out / "train.conll", DATA / "conll2003" / "eng.testa"


def squad_files(out: Path) -> tuple[Path, Path]:
    doc = json.loads((DATA / "squad_v1.1" / "dev-v1.1.json").read_text(encoding="utf-8"))
    articles = doc["data"]
    train, left = [], QA_TRAIN_QUESTIONS
    for article in articles[:-QA_HELDOUT_ARTICLES]:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            qas = paragraph["qas"][:left]
            left -= len(qas)
            if qas:
                paragraphs.append({**paragraph, "qas": qas})
        if paragraphs:
            train.append({**article, "paragraphs": paragraphs})
        if left == 0:
            break
    for name, part in (("train", train), ("heldout", articles[-QA_HELDOUT_ARTICLES:])):
        (out / f"squad-{name}.json").write_text(json.dumps({"version": "1.1", "data": part}))
    return out / "squad-train.json", out / "squad-heldout.json"


SLICES = {"classification": sst2_files, "ner": conll_files, "qa": squad_files}
TASK_HP: dict[str, dict[str, Any]] = {"classification": {"epochs": 2}, "ner": {}, "qa": {}}


def upload(client: httpx.Client, task: str, path: Path) -> str:
    with path.open("rb") as f:
        resp = client.post("/v1/datasets", data={"task": task}, files={"file": (path.name, f)})
    resp.raise_for_status()
    return str(resp.json()["id"])


def predict_accuracy(client: httpx.Client, model: str, dev: Path) -> float:
    """Accuracy through /predict on the dev rows (text<TAB>label)."""
    rows = [line.split("\t") for line in dev.read_text(encoding="utf-8").splitlines()[1:]]
    right = 0
    for i in range(0, len(rows), 64):
        chunk = rows[i : i + 64]
        resp = client.post(
            "/v1/predict/classification",
            json={"model": model, "inputs": [text for text, _ in chunk]},
        )
        resp.raise_for_status()
        for (_, label), pred in zip(chunk, resp.json()["predictions"], strict=True):
            right += pred[0]["label"] == label
    return right / len(rows)


def floor(task: str, method: str, baseline: float | None) -> float | None:
    metric, floor_all, floor_head = FLOORS[task]
    value = floor_head if method == "head_only" else floor_all
    return baseline if value is None else value


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    overrides: list[dict[str, Any]] = [json.loads(h) for h in args.hp] or [{}]
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_service(Path(tmp) / "data", Path(tmp) / "service.log") as (
            client,
            _port,
            _pid,
            _key,
        ),
    ):
        for task in args.task:
            train, dev = SLICES[task](Path(tmp))
            train_id, dev_id = upload(client, task, train), upload(client, task, dev)
            metric = FLOORS[task][0]
            for method in args.method:
                for hp in overrides:
                    for seed in args.seeds:
                        ids = (train_id, dev_id)
                        rec = one(client, task, method, hp, seed, ids, dev, metric, args)
                        if rec is not None:
                            results.append(rec)
    return results


def one(
    client: httpx.Client,
    task: str,
    method: str,
    hp: dict[str, Any],
    seed: int,
    ids: tuple[str, str],
    dev: Path,
    metric: str,
    args: argparse.Namespace,
) -> dict[str, Any] | None:
    method_spec = {"type": method, **json.loads(args.method_options or "{}")}
    spec = {
        "task": task,
        "base_model": BASE,
        "train_dataset": ids[0],
        "validation_dataset": ids[1],
        "method": method_spec,
        "hyperparameters": {**TASK_HP[task], **hp},
        "seed": seed,
    }
    started = time.monotonic()
    resp = client.post("/v1/jobs", json=spec)
    error = resp.json().get("error") or {} if resp.status_code == 422 else {}
    if (error.get("details") or {}).get("field") == "method.type":
        # A method the task does not support (prefix tuning for QA): refused, not a result.
        print(f"{task} {method}: refused: {error.get('message')}", flush=True)
        return None
    resp.raise_for_status()
    job = wait_for_job(client, resp.json()["id"])
    metrics = job.get("metrics") or {}
    baseline = job.get("baseline_metrics") or {}
    rec: dict[str, Any] = {
        "task": task,
        "method": method,
        "method_options": json.loads(args.method_options or "{}"),
        "hp": hp,
        "seed": seed,
        "status": job["status"],
        "error": job.get("error"),
        "seconds": round(time.monotonic() - started),
        "metric": metric,
        "value": metrics.get(metric),
        "baseline": baseline.get(metric),
        "quality": job.get("quality"),
        "train_loss": job.get("train_loss"),
        "resolved": {
            k: (job.get("hyperparameters") or {}).get(k)
            for k in ("learning_rate", "epochs", "batch_size", "warmup_ratio", "lr_scheduler")
        },
        "method_resolved": job.get("method"),
    }
    if task == "classification" and job["status"] == "succeeded" and job.get("model_id"):
        rec["predict_accuracy"] = predict_accuracy(client, job["model_id"], dev)
    rec["floor"] = floor(task, method, rec["baseline"])
    value = rec.get("predict_accuracy", rec["value"])
    rec["meets_floor"] = value is not None and rec["floor"] is not None and value >= rec["floor"]
    print(json.dumps(rec), flush=True)
    if args.log:
        with args.log.open("a") as f:
            f.write(json.dumps(rec) + "\n")
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", nargs="+", choices=tuple(SLICES), default=list(SLICES))
    ap.add_argument("--method", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--hp", action="append", default=[], help="hyperparameter overrides (JSON)")
    ap.add_argument("--method-options", default=None, help="method options (JSON)")
    ap.add_argument("--log", type=Path, default=None, help="append each result (JSON lines)")
    args = ap.parse_args()
    results = run(args)
    print()
    print(f"{'task':<15}{'method':<15}{'seed':>5}{'value':>9}{'baseline':>10}{'floor':>7}  ok")
    for r in results:
        value = r.get("predict_accuracy", r["value"])
        print(
            f"{r['task']:<15}{r['method']:<15}{r['seed']:>5}"
            f"{value if value is None else round(value, 3)!s:>9}"
            f"{r['baseline'] if r['baseline'] is None else round(r['baseline'], 3)!s:>10}"
            f"{r['floor'] if r['floor'] is None else round(r['floor'], 3)!s:>7}  {r['meets_floor']}"
        )
    print(
        json.dumps({"results": results, "all_meet_floors": all(r["meets_floor"] for r in results)})
    )


if __name__ == "__main__":
    main()
