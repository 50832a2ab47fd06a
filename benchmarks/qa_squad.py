"""Fine-tune all-MiniLM-L6-v2 for extractive QA on SQuAD v1.1 dev split by article, over HTTP,
with the service's defaults; report EM/F1 on held-out articles, training time, and check that
/predict answers slice their context exactly. Ends with one line of JSON holding the figures.

    .venv/bin/python benchmarks/qa_squad.py --serve /tmp/qa-acc --port 8012   # starts the service
    .venv/bin/python benchmarks/qa_squad.py --api http://127.0.0.1:8000       # a running one

The first 10 articles (3,036 questions) train, the last 8 (1,589 questions) evaluate: no context
is shared. Nothing is written to the repository; the split lives in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from app.ml.tasks.qa_postprocess import squad_scores  # noqa: E402

BASE = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "squad_v1.1" / "dev-v1.1.json"


def split_by_article(src: Path, out: Path, *, train: int, held_out: int) -> tuple[Path, Path]:
    """The first `train` articles and the last `held_out` ones, each as a SQuAD JSON file."""
    doc = json.loads(src.read_text(encoding="utf-8"))
    articles = doc["data"]
    paths = []
    for name, part in (("train", articles[:train]), ("heldout", articles[-held_out:])):
        path = out / f"squad-{name}.json"
        path.write_text(json.dumps({"version": doc.get("version", "1.1"), "data": part}))
        paths.append(path)
    return paths[0], paths[1]


def questions(path: Path) -> list[dict[str, Any]]:
    out = []
    for article in json.loads(path.read_text())["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                golds = [a["text"] for a in qa["answers"]]
                out.append(
                    {
                        "question": qa["question"],
                        "context": paragraph["context"],
                        "golds": golds,
                        "start": qa["answers"][0]["answer_start"] if qa["answers"] else -1,
                    }
                )
    return out


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer $TUNESERVE_API_KEY` (`tuneserve up` prints a key on first start)."""
    key = os.environ.get("TUNESERVE_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


@contextmanager
def service(data_dir: Path | None, port: int, api: str) -> Iterator[str]:
    """Start `tuneserve up` when asked (stopped with SIGTERM afterwards), else use `api`."""
    if data_dir is None:
        yield api
        return
    log = open(data_dir.parent / f"{data_dir.name}.log", "wb")  # noqa: SIM115
    # The service registers this key as its admin key; the client below sends it.
    os.environ.setdefault("TUNESERVE_API_KEY", "tsk_" + secrets.token_urlsafe(32))
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TUNESERVE_BOOTSTRAP_ADMIN_KEY": os.environ["TUNESERVE_API_KEY"],
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--data-dir", str(data_dir), "--port", str(port)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start; see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def upload(client: httpx.Client, path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        resp = client.post("/v1/datasets", data={"task": "qa"}, files={"file": (path.name, f)})
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    last = 0.0
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() - last > 60:
            p = job["progress"]
            print(
                f"  {job['status']}: step {p['step']}/{p['total']} loss {job['train_loss']}"
                f" load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            last = time.monotonic()
        time.sleep(5)


def predict_all(
    client: httpx.Client, model: str, rows: list[dict[str, Any]], batch: int = 64
) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    for i in range(0, len(rows), batch):
        inputs = [{"question": r["question"], "context": r["context"]} for r in rows[i : i + batch]]
        resp = client.post("/v1/predict/qa", json={"model": model, "inputs": inputs, "top_k": 1})
        resp.raise_for_status()
        answers += [p[0] for p in resp.json()["predictions"]]
    return answers


def seconds_between(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--serve", type=Path, default=None, help="start `tuneserve up` on this dir")
    ap.add_argument("--port", type=int, default=8012)
    ap.add_argument("--api", default="http://127.0.0.1:8000")
    ap.add_argument("--method", choices=("full", "lora"), default="full")
    ap.add_argument("--train-articles", type=int, default=10)
    ap.add_argument("--heldout-articles", type=int, default=8)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp, service(args.serve, args.port, args.api) as url:
        train_path, heldout_path = split_by_article(
            args.data, Path(tmp), train=args.train_articles, held_out=args.heldout_articles
        )
        client = httpx.Client(base_url=url, timeout=600, headers=auth_headers())
        train, heldout = upload(client, train_path), upload(client, heldout_path)
        print(
            f"uploaded ({train['format']}): train {train['num_rows']} questions, "
            f"held out {heldout['num_rows']}"
        )
        spec = {
            "task": "qa",
            "base_model": BASE,
            "train_dataset": train["id"],
            "validation_dataset": heldout["id"],
            "method": {"type": args.method},
        }
        resp = client.post("/v1/jobs", json=spec)
        resp.raise_for_status()
        job = resp.json()
        print(f"job {job['id']}: hyperparameters {job['hyperparameters']}")
        print(f"  task_options {job['task_options']}")
        load_before = os.getloadavg()[0]
        t0 = time.monotonic()
        job = wait(client, job["id"])
        if job["status"] != "succeeded":
            raise SystemExit(f"job ended {job['status']}: {job.get('error')}")
        train_wall = seconds_between(job["started_at"], job["finished_at"])
        metrics = job["metrics"]
        waited = (time.monotonic() - t0) / 60
        print(
            f"trained in {train_wall / 60:.1f} min (submitted to done {waited:.1f} min); "
            f"held-out EM {metrics['exact_match']:.4f} F1 {metrics['f1']:.4f}"
        )

        rows = questions(heldout_path)
        p0 = time.monotonic()
        answers = predict_all(client, job["model_id"], rows)
        predict_s = time.monotonic() - p0
        exact = sum(
            r["context"][a["start"] : a["end"]] == a["answer"]
            for r, a in zip(rows, answers, strict=True)
        )
        served = squad_scores([a["answer"] for a in answers], [r["golds"] for r in rows])
        print(
            f"/predict: {len(rows)} questions in {predict_s:.1f} s; {exact} answers slice their "
            f"context exactly; served EM {served['exact_match']:.4f} F1 {served['f1']:.4f}"
        )
        figures = {
            "benchmark": "qa_squad",
            "method": args.method,
            "train_questions": train["num_rows"],
            "heldout_questions": heldout["num_rows"],
            "exact_match": round(metrics["exact_match"], 4),
            "f1": round(metrics["f1"], 4),
            "served_exact_match": round(served["exact_match"], 4),
            "served_f1": round(served["f1"], 4),
            "answers_slice_exactly": f"{exact}/{len(rows)}",
            "train_wall_s": round(train_wall, 1),
            "predict_s": round(predict_s, 1),
            "hyperparameters": job["hyperparameters"],
            "task_options": job["task_options"],
            "load_avg_at_start": round(load_before, 2),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
