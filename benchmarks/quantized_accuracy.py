"""Accuracy and evaluation speed of an int8_dynamic quantization against its fp32 parent, through
the real service.

all-MiniLM-L6-v2 is fully fine-tuned on the first N rows of SST-2's train.tsv with SST-2's dev.tsv
(872 rows) as its validation set (or `--model-id` names a model already registered on a running
service, `--api`), then a quantize job (`method: {"type": "quantize", "scheme": "int8_dynamic"}`)
evaluates the fp32 parent and its int8 copy on those 872 dev rows and registers the int8 model.
The figures are the job's own: accuracy of each (the model's `metrics` and `parent_metrics`),
and samples/s of each evaluation (the same Trainer evaluation, batch size and threads, on the CPU,
timed after one warm-up batch; tokenization and model loading are not timed). A /predict call on
the int8 model checks it serves.

    python benchmarks/quantized_accuracy.py                 # 2,000 rows, 2 epochs, then quantize
    python benchmarks/quantized_accuracy.py --quick         # smoke test: 64 rows, 64 dev, 1 epoch
    TUNESERVE_API_KEY=tsk_... python benchmarks/quantized_accuracy.py \\
        --api http://127.0.0.1:8000 --model-id mdl_...      # quantize a model of a running service

Prints a table and ends with one line of JSON (`int8_accuracy`, `fp32_accuracy`,
`accuracy_delta`, `speedup`, ...). Exits non-zero if a job fails. Nothing is written to the
repository: the slices and the started service's data dir live in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as bench  # noqa: E402

QUICK = {"train_rows": 64, "dev_rows": 64, "epochs": 1}
QUANTIZE = {"type": "quantize", "scheme": "int8_dynamic"}
SENTENCES = {"a gorgeous, witty, moving film": "1", "a tedious, joyless mess": "0"}


@contextmanager
def service_client(args: argparse.Namespace, tmp: Path) -> Iterator[httpx.Client]:
    """A client of the running service `--api` (key: TUNESERVE_API_KEY), or of `tuneserve up`
    started on a temporary data dir with `--threads` training threads."""
    if args.api:
        key = os.environ.get("TUNESERVE_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(base_url=args.api, timeout=120, headers=headers) as client:
            yield client
        return
    env = bench.base_env() | {"TUNESERVE_TRAINING_THREADS": str(args.threads)}
    data_dir = tmp / "service-data"
    try:
        with bench.running_service(data_dir, env) as client:
            yield client
    except bench.RunFailed as exc:
        worker_log = bench.log_tail(data_dir / "logs" / "worker.log")
        raise bench.RunFailed(f"{exc}\n--- worker.log\n{worker_log}") from None


def run_job(client: httpx.Client, spec: dict[str, Any], what: str) -> dict[str, Any]:
    resp = client.post("/v1/jobs", json=spec)
    if resp.status_code != 201:
        raise bench.RunFailed(f"submitting the {what} job: {resp.status_code} {resp.text}")
    job = bench.wait_for_job(client, resp.json()["id"])
    if job["status"] != "succeeded":
        raise bench.RunFailed(f"the {what} job ended {job['status']}: {job.get('error')}")
    return job


def fine_tune(client: httpx.Client, train: Path, dev_id: str, *, epochs: int) -> str:
    """A full fine-tune of the base model with the service's defaults; its model id."""
    train_ds = bench.upload(client, train)
    spec = {
        "task": "classification",
        "base_model": bench.BASE,
        "train_dataset": train_ds["id"],
        "validation_dataset": dev_id,
        "method": {"type": "full"},
        "hyperparameters": {"epochs": epochs},
    }
    job = run_job(client, spec, "fine-tuning")
    print(f"  fine-tuned: {job['model_id']}, dev accuracy {job['metrics']['accuracy']:.4f}")
    return str(job["model_id"])


def quantize(client: httpx.Client, parent_id: str, dev_id: str) -> dict[str, Any]:
    """The quantize job, its events and the int8 model it registered."""
    spec = {
        "task": "classification",
        "base_model": f"model:{parent_id}",
        "method": QUANTIZE,
        "validation_dataset": dev_id,
    }
    job = run_job(client, spec, "quantize")
    model = client.get(f"/v1/models/{job['model_id']}").json()
    events = bench.job_events(client, job["id"])
    evals = {
        e["data"]["precision"]: e["data"]
        for e in events
        if (e.get("data") or {}).get("kind") == "eval" and "precision" in e["data"]
    }
    return {
        "job": job,
        "model": model,
        "evals": evals,
        "summary": bench.event_data(events, "speedup"),
        "quantized": bench.event_data(events, "quantize_seconds"),
        "settings": bench.event_data(events, "scheme"),
    }


def served_labels(client: httpx.Client, model_id: str) -> list[str]:
    resp = client.post(
        "/v1/predict/classification",
        json={"model": model_id, "inputs": list(SENTENCES), "top_k": 1},
    )
    if resp.status_code != 200:
        raise bench.RunFailed(f"/predict on the int8 model: {resp.status_code} {resp.text}")
    return [p[0]["label"] for p in resp.json()["predictions"]]


def summarize(
    q: dict[str, Any], *, parent_id: str, labels: list[str], load: dict[str, float]
) -> dict[str, Any]:
    model, fp32, int8 = q["model"], q["evals"]["fp32"], q["evals"]["int8"]
    int8_acc, fp32_acc = model["metrics"]["accuracy"], model["parent_metrics"]["accuracy"]
    return {
        "benchmark": "quantized_accuracy",
        "int8_accuracy": round(int8_acc, 4),
        "fp32_accuracy": round(fp32_acc, 4),
        "accuracy_delta": round(int8_acc - fp32_acc, 4),
        "speedup": q["summary"]["speedup"],
        "int8_samples_per_s": int8["samples_per_second"],
        "fp32_samples_per_s": fp32["samples_per_second"],
        "int8_eval_s": int8["seconds"],
        "fp32_eval_s": fp32["seconds"],
        "int8_eval_loss": round(model["metrics"]["eval_loss"], 4),
        "fp32_eval_loss": round(model["parent_metrics"]["eval_loss"], 4),
        "parent_recorded_accuracy": fp32.get("parent_recorded_accuracy"),
        "validation_rows": q["summary"]["validation_rows"],
        "eval_batch_size": q["settings"]["batch_size"],
        "max_length": q["settings"]["max_length"],
        "threads": q["settings"]["torch_threads"],
        "quantize_s": q["quantized"]["quantize_seconds"],
        "quantized_layers": q["quantized"]["quantized_layers"],
        "int8_model": model["id"],
        "fp32_model": parent_id,
        "int8_model_dir_bytes": model["size_bytes"],
        "served_labels_ok": labels == list(SENTENCES.values()),
        "load_avg_1m": load,
        "cpus": os.cpu_count(),
        "versions": bench.versions(),
    }


def print_table(f: dict[str, Any]) -> None:
    rows = [
        ("dev accuracy", f["fp32_accuracy"], f["int8_accuracy"]),
        ("dev eval_loss", f["fp32_eval_loss"], f["int8_eval_loss"]),
        ("evaluation seconds", f["fp32_eval_s"], f["int8_eval_s"]),
        ("evaluation samples/s", f["fp32_samples_per_s"], f["int8_samples_per_s"]),
    ]
    print(f"\n{'':24} {'fp32 (parent)':>16} {'int8_dynamic':>16}")
    for name, fp32, int8 in rows:
        print(f"{name:24} {fp32!s:>16} {int8!s:>16}")
    print(
        f"\n{f['validation_rows']} dev rows, eval batch {f['eval_batch_size']}, "
        f"{f['threads']} torch threads. accuracy delta (int8 - fp32): {f['accuracy_delta']:+.4f}; "
        f"int8 evaluation speed-up: {f['speedup']}x. The fp32 parent's accuracy as the parent's "
        f"own training evaluation recorded it: {f['parent_recorded_accuracy']}. "
        f"Load average (1 min): {f['load_avg_1m']}."
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=bench.DEFAULT_DATA, help="folder of SST-2 TSVs")
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads of the started service's worker (default: every usable core)",
    )
    ap.add_argument("--api", help="a running service to use instead of starting one")
    ap.add_argument("--model-id", help="quantize this registered model (with --api) instead")
    ap.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    args = ap.parse_args()
    if args.model_id and not args.api:
        ap.error("--model-id names a model of a running service: give --api too")
    train_rows, dev_rows, epochs = args.train_rows, None, args.epochs
    if args.quick:
        train_rows, dev_rows, epochs = QUICK["train_rows"], QUICK["dev_rows"], QUICK["epochs"]
    for name in ("train.tsv", "dev.tsv"):
        if not (args.data / name).exists():
            print(f"SST-2 not found: {args.data / name} (see --data)", file=sys.stderr)
            return 2

    load = {"start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="quantized-accuracy-") as name:
        tmp = Path(name)
        train, dev = tmp / f"sst2-train-{train_rows}.tsv", tmp / "sst2-dev.tsv"
        bench.head_lines(args.data / "train.tsv", train, train_rows)
        bench.head_lines(args.data / "dev.tsv", dev, dev_rows)
        started = time.monotonic()
        try:
            with service_client(args, tmp) as client:
                dev_id = str(bench.upload(client, dev)["id"])
                if args.model_id:
                    parent_id = args.model_id
                else:
                    print(f"fine-tuning on {train_rows} SST-2 rows x {epochs} epochs", flush=True)
                    parent_id = fine_tune(client, train, dev_id, epochs=epochs)
                    load["after_fine_tune"] = round(os.getloadavg()[0], 2)
                print(f"quantizing {parent_id} (int8_dynamic)", flush=True)
                result = quantize(client, parent_id, dev_id)
                load["after_quantize"] = round(os.getloadavg()[0], 2)
                labels = served_labels(client, result["model"]["id"])
        except bench.RunFailed as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
    figures = summarize(result, parent_id=parent_id, labels=labels, load=load)
    figures["quick"] = args.quick
    figures["wall_s"] = round(time.monotonic() - started, 1)
    print_table(figures)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
