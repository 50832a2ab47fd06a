"""A hyperparameter sweep against the service's defaults on SST-2, over the HTTP API only.

Uploads the header plus the first N rows of SST-2 train.tsv (bytes unchanged) and the whole dev.tsv
(872 rows), fine-tunes all-MiniLM-L6-v2 once with the service's default hyperparameters, then runs
a sweep of learning rate, batch size and epochs (TPE, median pruning) with dev.tsv as every
trial's validation set. Prints both dev accuracies and the sweep's wall time, and ends with one
line of JSON.

    .venv/bin/python benchmarks/sweep_sst2.py                 # starts `tuneserve up` itself
    .venv/bin/python benchmarks/sweep_sst2.py --api http://127.0.0.1:8000   # a running service
                                                        # (key in TUNESERVE_API_KEY)
    .venv/bin/python benchmarks/sweep_sst2.py --train-rows 300 --trials 3   # a quick check

No assertion: the figures are printed, not judged.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.train_throughput import (  # noqa: E402
    BASE,
    base_env,
    head_lines,
    running_service,
    upload,
    wait_for_job,
)

DEFAULT_DATA = REPO.parent / "shared" / "data" / "sst2"
ENDED = ("succeeded", "failed", "cancelled")
# The space searched: the three settings a user is least sure of.
SEARCH_SPACE = {
    "learning_rate": {"loguniform": [1e-5, 1e-3]},
    "batch_size": {"choice": [16, 32, 64]},
    "epochs": {"int": [1, 4]},
}


@contextmanager
def service(api: str | None) -> Iterator[httpx.Client]:
    """A client of the service at `api` (key: TUNESERVE_API_KEY), or of one started here."""
    if api is not None:
        key = os.environ.get("TUNESERVE_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(base_url=api, timeout=120, headers=headers) as client:
            yield client
        return
    with tempfile.TemporaryDirectory(prefix="sweep-sst2-") as tmp:
        print(f"starting tuneserve up on {tmp}", flush=True)
        with running_service(Path(tmp) / "data", base_env()) as client:
            yield client


def wait_for_sweep(client: httpx.Client, sweep_id: str) -> dict[str, Any]:
    """Poll until the sweep ends, printing each trial as it ends."""
    shown: set[int] = set()
    while True:
        resp = client.get(f"/v1/sweeps/{sweep_id}")
        resp.raise_for_status()
        sweep: dict[str, Any] = resp.json()
        for trial in sweep["trials"]:
            if trial["state"] != "running" and trial["number"] not in shown:
                shown.add(trial["number"])
                value = trial["value"]
                print(
                    f"  trial {trial['number']}: {trial['state']}, accuracy "
                    f"{value if value is None else round(value, 4)}, {trial['params']}, "
                    f"{trial['duration_s']} s",
                    flush=True,
                )
        if sweep["status"] in ENDED:
            return sweep
        time.sleep(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--api", default=None, help="a running service (default: start one)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--time-budget", type=float, default=None, help="seconds, optional")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-default", action="store_true", help="skip the default-settings job")
    args = parser.parse_args()
    for name in ("train.tsv", "dev.tsv"):
        if not (args.data / name).exists():
            raise SystemExit(f"SST-2 not found: {args.data / name} (see --data)")

    with tempfile.TemporaryDirectory() as tmp, service(args.api) as client:
        train_path = Path(tmp) / f"sst2-train-{args.train_rows}.tsv"
        head_lines(args.data / "train.tsv", train_path, args.train_rows)
        train, dev = upload(client, train_path), upload(client, args.data / "dev.tsv")
        print(f"uploaded: train {train['num_rows']} rows, dev {dev['num_rows']} rows", flush=True)
        base = {
            "task": "classification",
            "base_model": BASE,
            "train_dataset": train["id"],
            "validation_dataset": dev["id"],
            "method": {"type": "full"},
            "seed": args.seed,
        }

        default: dict[str, Any] | None = None
        default_s = None
        if not args.no_default:
            resp = client.post("/v1/jobs", json=base)
            resp.raise_for_status()
            start = time.perf_counter()
            default = wait_for_job(client, resp.json()["id"])
            default_s = time.perf_counter() - start
            if default["status"] != "succeeded":
                raise SystemExit(f"the default job ended {default['status']}: {default['error']}")
            hp = default["hyperparameters"]
            print(
                f"defaults (lr {hp['learning_rate']}, batch {hp['batch_size']}, epochs "
                f"{hp['epochs']}): dev accuracy {default['metrics']['accuracy']:.4f} in "
                f"{default_s:.0f} s",
                flush=True,
            )

        body = {
            **base,
            "hyperparameters": SEARCH_SPACE,
            "max_trials": args.trials,
            "parallel": args.parallel,
            "time_budget_s": args.time_budget,
        }
        start = time.perf_counter()
        resp = client.post("/v1/sweeps", json=body)
        if resp.status_code != 201:
            raise SystemExit(f"the sweep was refused: {resp.status_code} {resp.text}")
        sweep_id = resp.json()["id"]
        print(f"sweep {sweep_id}: {args.trials} trials, {args.parallel} at once", flush=True)
        sweep = wait_for_sweep(client, sweep_id)
        sweep_s = time.perf_counter() - start

    best = sweep["best"]
    default_acc = default["metrics"]["accuracy"] if default is not None else None
    best_acc = best["value"] if best is not None else None
    print(
        f"sweep {sweep['status']} ({sweep['stop_reason']}) in {sweep_s:.0f} s: "
        f"{sweep['trial_counts']}; best dev accuracy "
        f"{best_acc if best_acc is None else round(best_acc, 4)} with "
        f"{best['params'] if best else None}; defaults "
        f"{default_acc if default_acc is None else round(default_acc, 4)}"
    )
    print(
        json.dumps(
            {
                "train_rows": train["num_rows"],
                "dev_rows": dev["num_rows"],
                "default_dev_accuracy": default_acc,
                "default_hyperparameters": (
                    {k: default["hyperparameters"][k] for k in SEARCH_SPACE} if default else None
                ),
                "default_wall_s": round(default_s, 1) if default_s is not None else None,
                "sweep_best_dev_accuracy": best_acc,
                "sweep_best_params": best["params"] if best else None,
                "sweep_best_model": sweep["best_model_id"],
                "sweep_wall_s": round(sweep_s, 1),
                "sweep_status": sweep["status"],
                "sweep_trials": sweep["trial_counts"],
                "sweep_parallel": args.parallel,
                "trials": [
                    {k: t[k] for k in ("number", "state", "params", "value", "duration_s")}
                    for t in sweep["trials"]
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
