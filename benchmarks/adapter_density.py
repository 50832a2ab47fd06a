"""Many LoRA fine-tunes on one base: memory and throughput of serving them from one process.

Through the real service (`tuneserve up` on a temporary data directory), this registers N LoRA
fine-tunes of all-MiniLM-L6-v2 (default 20; short runs on a slice of real SST-2, each with its own
seed) and one full fine-tune, then:

1. memory: in a freshly started API process that has served one adapter, loads the full model (one
   /predict) and reads how much the process's resident memory grew; in another fresh process that
   has served the full model, loads all N adapters (their base with them) and does the same.
   `memory_ratio` = the adapters' growth over the full model's (target: under 1.5).
2. throughput: with the N adapters loaded, drives /predict with real SST-2 dev sentences from
   serve_throughput's raw asyncio client (closed loop, one sentence per request, fixed concurrency),
   all to one adapter or cycling over all N (so batches mix adapters), in alternating phases
   (single, mixed, mixed, single, ...), and prints requests/s of each, pooled over the phases;
   `mixed_throughput_ratio` = mixed over single (target: at least 0.7).

It ends with one line of JSON. `--quick` trains 3 adapters on a few rows, for a smoke test;
`--data-dir DIR` keeps the service's data (and reuses the models a previous run left there).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.serve_throughput import Server, measure, pooled  # noqa: E402
from benchmarks.train_throughput import (  # noqa: E402
    BASE,
    DEFAULT_DATA,
    RunFailed,
    base_env,
    head_lines,
    running_service,
    tsv_texts,
    upload,
    versions,
    wait_for_job,
)

QUICK = {"adapters": 3, "train_rows": 64, "steps": 2, "rounds": 1, "seconds": 2.0}


def api_pid(port_client: httpx.Client) -> int:
    """The pid of the API process serving this client (the `app.cli api` child of `up`)."""
    port = str(port_client.base_url.port)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if "api" in words and "app.cli" in words and port in words:
            return int(proc.name)
    raise RunFailed(f"no API process found for port {port}")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RunFailed(f"no VmRSS for pid {pid}")


def settle_rss(pid: int) -> int:
    """Resident memory once it stops moving (the allocator returns freed pages lazily)."""
    samples = []
    for _ in range(5):
        samples.append(rss_bytes(pid))
        time.sleep(0.2)
    return int(statistics.median(samples))


def predict(client: httpx.Client, model: str, texts: list[str]) -> None:
    resp = client.post("/v1/predict/classification", json={"model": model, "inputs": texts})
    if resp.status_code != 200:
        raise RunFailed(f"predict with {model}: {resp.status_code} {resp.text[:300]}")


def train(
    client: httpx.Client, train_id: str, method: dict[str, Any], seed: int, steps: int
) -> str:
    resp = client.post(
        "/v1/jobs",
        json={
            "task": "classification",
            "base_model": BASE,
            "train_dataset": train_id,
            "method": method,
            "seed": seed,
            "hyperparameters": {
                "max_steps": steps,
                "batch_size": 16,
                "max_length": 64,
                "checkpoint_every": "no",
            },
        },
    )
    if resp.status_code != 201:
        raise RunFailed(f"submitting a job: {resp.status_code} {resp.text}")
    job = wait_for_job(client, resp.json()["id"])
    if job["status"] != "succeeded":
        raise RunFailed(f"job {job['id']} ended {job['status']}: {job.get('error')}")
    return str(job["model_id"])


def request_server(client: httpx.Client, pid: int, models: list[str]) -> Server:
    """The service's classification route as a load target; request i names models[i % N]."""
    turn = itertools.count()
    return Server(
        f"{len(models)} model(s)",
        port=int(client.base_url.port or 0),
        pid=pid,
        path="/v1/predict/classification",
        body=lambda t: json.dumps(
            {"model": models[next(turn) % len(models)], "inputs": [t]}
        ).encode(),
        headers=f"Authorization: {client.headers['Authorization']}\r\n",
    )


def existing_models(client: httpx.Client) -> tuple[str | None, list[str]]:
    """A full fine-tune and the LoRA fine-tunes of BASE already registered (a reused data dir)."""
    resp = client.get("/v1/models", params={"task": "classification", "limit": 100})
    resp.raise_for_status()
    rows = resp.json()["data"][::-1]  # oldest first
    full = next((m["id"] for m in rows if m["method"] == "full" and m["base_model"] == BASE), None)
    loras = [m["id"] for m in rows if m["method"] == "lora" and m["base_model"] == BASE]
    return full, loras


@contextmanager
def service(data_dir: Path, env: dict[str, str]) -> Iterator[httpx.Client]:
    with running_service(data_dir, env) as client:
        yield client


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with SST-2's TSVs")
    ap.add_argument("--adapters", type=int, default=20)
    ap.add_argument("--train-rows", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps of each fine-tune")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="phases of each load (single, mixed)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    ap.add_argument("--data-dir", type=Path, help="the service's data dir, kept (and reused)")
    ap.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    args = ap.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if not (args.data / "train.tsv").exists():
        print(f"SST-2 not found under {args.data}", file=sys.stderr)
        return 2

    # One key drives the whole load: the per-key rate limit (1,200 a minute) would cap it.
    env = base_env() | {"TUNESERVE_RATE_LIMIT_PER_MINUTE": "0"}
    work = Path(tempfile.mkdtemp(prefix="adapter-density-"))
    data_dir = (args.data_dir or work / "service-data").resolve()
    texts = tsv_texts(args.data / "dev.tsv")
    head_lines(args.data / "train.tsv", work / "train.tsv", args.train_rows)
    try:
        with service(data_dir, env) as client:
            full, adapters = existing_models(client)
            adapters = adapters[: args.adapters]
            missing = args.adapters - len(adapters)
            print(
                f"training {int(full is None)} full model(s) and {missing} LoRA adapters "
                f"({len(adapters)} found in {data_dir}) ...",
                flush=True,
            )
            train_id = upload(client, work / "train.tsv")["id"]
            if full is None:
                full = train(client, train_id, {"type": "full"}, 1, args.steps)
            adapters += [
                train(client, train_id, {"type": "lora", "r": 8}, seed, args.steps)
                for seed in range(100 + len(adapters), 100 + args.adapters)
            ]
        # Each measurement in a fresh API process that has already loaded the other kind of model,
        # so torch, the tokenizer and the allocator's first arenas are in the baseline, not the
        # growth: what is measured is the memory of the models alone.
        with service(data_dir, env) as client:
            pid = api_pid(client)
            predict(client, adapters[0], texts[:1])
            before = settle_rss(pid)
            predict(client, full, texts[:1])
            full_growth = settle_rss(pid) - before
        with service(data_dir, env) as client:
            pid = api_pid(client)
            predict(client, full, texts[:1])
            before = settle_rss(pid)
            for model in adapters:
                predict(client, model, texts[:1])
            adapters_growth = settle_rss(pid) - before
            metrics = client.get("/metrics").text
            loaded = [
                line
                for line in metrics.splitlines()
                if line.startswith("tuneserve_loaded_model_bytes{")
            ]
            for model in adapters[:2]:  # warm both paths
                predict(client, model, texts[:4])
            loads = {
                "single": request_server(client, pid, adapters[:1]),
                "mixed": request_server(client, pid, adapters),
            }
            requests = {name: [srv.request(t) for t in texts] for name, srv in loads.items()}
            phases: dict[str, list[Any]] = {"single": [], "mixed": []}
            for r in range(args.rounds):
                for name in ("single", "mixed") if r % 2 == 0 else ("mixed", "single"):
                    phase = measure(
                        loads[name],
                        requests[name],
                        concurrency=args.concurrency,
                        warmup=min(2.0, args.seconds / 2),
                        seconds=args.seconds,
                    )
                    phases[name].append(phase)
                    print(f"  round {r + 1} {name:6} {phase.rps:6.1f} req/s", flush=True)
            single_load, mixed_load = pooled(phases["single"]), pooled(phases["mixed"])
            single, mixed = single_load["rps"], mixed_load["rps"]
    except RunFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1

    figures = {
        "benchmark": "adapter_density",
        "quick": args.quick,
        "adapters": args.adapters,
        "full_model_rss_growth_bytes": full_growth,
        "adapters_rss_growth_bytes": adapters_growth,
        "memory_ratio": round(adapters_growth / max(full_growth, 1), 3),
        "single_adapter_requests_per_s": round(single, 1),
        "mixed_adapters_requests_per_s": round(mixed, 1),
        "mixed_throughput_ratio": round(mixed / single, 3),
        "single": single_load,
        "mixed": mixed_load,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "seconds_per_phase": args.seconds,
        "loaded_bytes_reported": len(loaded),
        "load_avg_1m": os.getloadavg()[0],
        "versions": versions(),
    }
    print()
    rows = [
        ("resident memory growth, one full model", f"{full_growth / 2**20:.1f} MiB"),
        (
            f"resident memory growth, {args.adapters} LoRA adapters",
            f"{adapters_growth / 2**20:.1f} MiB",
        ),
        ("memory ratio (adapters / full model)", figures["memory_ratio"]),
        ("requests/s, one adapter", figures["single_adapter_requests_per_s"]),
        (f"requests/s, {args.adapters} adapters mixed", figures["mixed_adapters_requests_per_s"]),
        ("mixed / single throughput", figures["mixed_throughput_ratio"]),
    ]
    for name, value in rows:
        print(f"{name:<45} {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
