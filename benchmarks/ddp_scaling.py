"""Data-parallel training (`resources.processes`) against one process, on the same data and the
same effective batch: training throughput, its scaling, and dev accuracy. Runs each job through
the API of a fresh `tuneserve up` (its worker launches torchrun for the multi-process job) and
ends with one line of JSON.

    .venv/bin/python benchmarks/ddp_scaling.py                        # 1 and 2 processes, CPU
    .venv/bin/python benchmarks/ddp_scaling.py --processes 1 2 4 8 --precision bf16 --rows 20000

On a CPU machine the processes share its cores (each gets cores / N torch threads), so the figure
to read is the accuracy, which must stay within noise, and the cost of the extra processes; on a
machine with N GPUs each process has a GPU of its own and `samples_per_second_per_process` shows
the scaling. Data: the first --rows rows of SST-2 train.tsv (all-MiniLM-L6-v2, full fine-tuning,
one epoch by default), the first --dev rows of dev.tsv as the validation set.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.serve_throughput import running_service  # noqa: E402
from benchmarks.train_throughput import BASE, job_events, wait_for_job  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def slice_file(name: str, rows: int, out: Path) -> Path:
    lines = (DATA / "sst2" / name).read_text(encoding="utf-8").splitlines()[: rows + 1]
    path = out / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def upload(client: httpx.Client, path: Path) -> str:
    with path.open("rb") as f:
        resp = client.post(
            "/v1/datasets", data={"task": "classification"}, files={"file": (path.name, f)}
        )
    resp.raise_for_status()
    return str(resp.json()["id"])


def one(
    client: httpx.Client, args: argparse.Namespace, ids: tuple[str, str], processes: int
) -> dict[str, Any]:
    spec = {
        "task": "classification",
        "base_model": BASE,
        "train_dataset": ids[0],
        "validation_dataset": ids[1],
        "method": json.loads(args.method),
        "hyperparameters": {
            "epochs": args.epochs,
            "batch_size": args.batch // processes,  # the same effective batch for every run
            "max_length": args.max_length,
            "mixed_precision": args.precision,
            "checkpoint_every": "no",
        },
        "resources": {"processes": processes},
        "seed": args.seed,
    }
    resp = client.post("/v1/jobs", json=spec)
    resp.raise_for_status()
    job = wait_for_job(client, resp.json()["id"])
    if job["status"] != "succeeded":
        raise SystemExit(f"{processes} processes: job {job['id']} {job['status']}: {job['error']}")
    done = next(
        e["data"]
        for e in job_events(client, job["id"])
        if (e.get("data") or {}).get("train_samples_per_second") is not None
    )
    rate = float(done["train_samples_per_second"])
    hp = job["hyperparameters"]
    return {
        "processes": processes,
        "batch_size": hp["batch_size"],
        "effective_batch_size": hp["effective_batch_size"],
        "steps": job["progress"]["total"],
        "torch_threads": hp["torch_threads"],
        "device": hp["device"],
        "mixed_precision": hp["mixed_precision"],
        "samples_per_second": rate,
        "samples_per_second_per_process": round(rate / processes, 2),
        "step_seconds": done.get("step_seconds"),
        "dev_accuracy": job["metrics"]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--dev", type=int, default=872)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32, help="effective batch of every run")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--method", default='{"type": "full"}')
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    results = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_service(Path(tmp) / "data", Path(tmp) / "service.log") as (client, *_),
    ):
        train = upload(client, slice_file("train.tsv", args.rows, Path(tmp)))
        dev = upload(client, slice_file("dev.tsv", args.dev, Path(tmp)))
        for n in args.processes:
            rec = one(client, args, (train, dev), n)
            results.append(rec)
            print(
                f"{n} process(es): {rec['samples_per_second']:.1f} samples/s "
                f"({rec['samples_per_second_per_process']:.1f} per process, {rec['steps']} steps "
                f"of {rec['effective_batch_size']}, {rec['torch_threads']} threads each, "
                f"{rec['device']}), dev accuracy {rec['dev_accuracy']:.4f}",
                flush=True,
            )
    first = results[0]
    summary = {
        "benchmark": "ddp_scaling",
        "rows": args.rows,
        "dev_rows": args.dev,
        "runs": results,
        "scaling": {
            str(r["processes"]): round(r["samples_per_second"] / first["samples_per_second"], 3)
            for r in results
        },
        "accuracy_delta_points": {
            str(r["processes"]): round(100 * (r["dev_accuracy"] - first["dev_accuracy"]), 2)
            for r in results
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
