"""ONNX exports of NER and QA models against their torch parents, through the service.

A fresh `tuneserve up` fine-tunes all-MiniLM-L6-v2 (full, the service's defaults otherwise) for
NER on the first N sentences of CoNLL-2003's eng.train with eng.testb as the validation set, and
for QA on SQuAD v1.1 dev split by article (the first questions of the first articles to train,
the last articles held out to validate); then an export job (`{"type": "export", "format":
"onnx"}`, and with `--int8` also `"quantization": "int8"`) exports each model and evaluates the
graph under ONNX Runtime beside its torch parent on those validation rows. Printed per task: the
parent's and the export's primary metric (entity F1, SQuAD F1) from the export job, their
difference, and the same through /predict for NER (every testb sentence, entities scored against
testb's gold spans) and QA (every held-out question, SQuAD F1 of the top answer). Ends with one
line of JSON.

    .venv/bin/python benchmarks/onnx_tasks.py                 # ~15 min on 2 cores
    .venv/bin/python benchmarks/onnx_tasks.py --task ner --int8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml.tasks.qa_postprocess import best_f1  # noqa: E402
from benchmarks.method_defaults import DATA, squad_files, upload  # noqa: E402
from benchmarks.ner_conll import head_sentences, predict_testb  # noqa: E402
from benchmarks.qa_squad import predict_all, questions  # noqa: E402
from benchmarks.serve_throughput import running_service  # noqa: E402
from benchmarks.train_throughput import BASE, wait_for_job  # noqa: E402

PRIMARY = {"ner": "f1", "qa": "f1"}


def ner_files(out: Path, sentences: int) -> tuple[Path, Path]:
    head = head_sentences((DATA / "conll2003" / "eng.train").read_bytes(), sentences)
    (out / "train.conll").write_bytes(head)
    return out / "train.conll", DATA / "conll2003" / "eng.testb"


def run_job(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/v1/jobs", json=spec)
    resp.raise_for_status()
    job = wait_for_job(client, resp.json()["id"])
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job['id']} {job['status']}: {job.get('error')}")
    return job


def served_score(client: httpx.Client, task: str, model: str, dev: Path) -> float:
    """The primary metric through /predict on every validation row."""
    if task == "ner":
        scores, _, bad = predict_testb(client, model, dev, 64)
        assert bad == 0, f"{bad} entities whose offsets do not slice their text"
        return float(scores["f1"])
    rows = questions(dev)
    answers = predict_all(client, model, rows)
    f1 = [best_f1(a["answer"], r["golds"]) for a, r in zip(answers, rows, strict=True)]
    return sum(f1) / len(f1)


def one_task(
    client: httpx.Client, task: str, tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    if task == "ner":
        train, dev = ner_files(tmp, args.sentences)
    else:
        train, dev = squad_files(tmp)
    train_id, dev_id = upload(client, task, train), upload(client, task, dev)
    print(f"{task}: training (full, defaults)", flush=True)
    parent = run_job(
        client,
        {
            "task": task,
            "base_model": BASE,
            "train_dataset": train_id,
            "validation_dataset": dev_id,
            "method": {"type": "full"},
        },
    )
    metric = PRIMARY[task]
    rec: dict[str, Any] = {"task": task, "parent": parent["model_id"], "metric": metric}
    torch_served = served_score(client, task, parent["model_id"], dev)
    rec["torch_predict"] = round(torch_served, 4)
    for quantization in ("none", "int8") if args.int8 else ("none",):
        name = "onnx" if quantization == "none" else "onnx_int8"
        print(f"{task}: export {name}", flush=True)
        job = run_job(
            client,
            {
                "task": task,
                "base_model": f"model:{parent['model_id']}",
                "method": {"type": "export", "format": "onnx", "quantization": quantization},
            },
        )
        model = client.get(f"/v1/models/{job['model_id']}").json()
        ours, theirs = model["metrics"][metric], model["parent_metrics"][metric]
        served = served_score(client, task, job["model_id"], dev)
        rec[name] = {
            "model": job["model_id"],
            "runtime": model["runtime"],
            "job_metric": round(ours, 4),
            "parent_job_metric": round(theirs, 4),
            "job_delta": round(ours - theirs, 4),
            "predict": round(served, 4),
            "predict_delta": round(served - torch_served, 4),
        }
        print(
            f"{task} {name}: {metric} {ours:.4f} vs torch {theirs:.4f} in the export job "
            f"({ours - theirs:+.4f}); through /predict {served:.4f} vs {torch_served:.4f} "
            f"({served - torch_served:+.4f})",
            flush=True,
        )
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", nargs="+", choices=("ner", "qa"), default=["ner", "qa"])
    ap.add_argument("--sentences", type=int, default=1000, help="CoNLL train sentences")
    ap.add_argument("--int8", action="store_true", help="also export with int8 weights")
    args = ap.parse_args()
    results = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_service(Path(tmp) / "data", Path(tmp) / "service.log") as (client, *_),
    ):
        for task in args.task:
            results.append(one_task(client, task, Path(tmp), args))
    print(json.dumps({"benchmark": "onnx_tasks", "results": results}))


if __name__ == "__main__":
    main()
