"""Serving throughput: the service's /v1/predict/classification against the tutorial way.

A classifier is fine-tuned from all-MiniLM-L6-v2 through `tuneserve up` (temporary data dir, full
fine-tuning on the first N rows of SST-2's train.tsv) and then served by two servers on 127.0.0.1,
one request per SST-2 dev sentence (dev.tsv's 872 sentences, cycled):

(a) service: the same `tuneserve up`, POST /v1/predict/classification with one input. Its API runs
    as `tuneserve up` starts it: TUNESERVE_INFERENCE_THREADS=1 and OMP_NUM_THREADS=1, dynamic
    micro-batching on (app/predict/batcher.py). The per-key rate limit is turned off
    (TUNESERVE_RATE_LIMIT_PER_MINUTE=0): it is policy, not speed.
(b) tutorial: benchmarks/serve_throughput_tutorial.py under uvicorn in a subprocess, a
    transformers pipeline("text-classification") on the very model directory the service
    registered, called once per request from a plain `def` route. It gets the service API's
    environment for threads: OMP_NUM_THREADS=1 and OMP_WAIT_POLICY=PASSIVE.
(c) tutorial_default_threads: the same with OMP_NUM_THREADS unset, so torch takes one thread per
    core (2 on a 2-core machine), as a tutorial that sets no thread count would
    (--no-default-threads leaves it out).
(d) service_int8: the same service and route with an int8 copy of the model, made by a quantize
    job (`method: {"type": "quantize", "scheme": "int8_dynamic"}`), which measures its accuracy
    against the fp32 model's before registering it (--no-int8 leaves it out). Its predictions are
    not expected to equal the fp32 model's; how many top labels differ is printed.
(e) service_onnx and service_onnx_int8: the same service and route with ONNX exports of the model
    made by export jobs (`method: {"type": "export", "format": "onnx", "quantization": "none" |
    "int8"}`), served by ONNX Runtime (--no-onnx leaves them out). Every dev sentence's scores for
    every label are compared with the fp32 torch model's through the same service:
    `onnx_top_label_diffs`, `onnx_max_score_diff`, and `onnx_int8_dev_accuracy_delta` (points of
    dev accuracy against the fp32 model's).

Load: a closed loop, written here on raw asyncio (uvloop when installed) HTTP/1.1 with one
keep-alive connection per client: N clients each send their next request when the previous one is
answered, at N = 1, 8 and 32. Each phase runs a warm-up, then a measured window; requests/s counts
the responses received inside the window, latencies are theirs (client-side, send to last byte).
Phases alternate between the servers (service first in odd rounds, last in even rounds), so a
neighbour's load falls on all of them alike; the figures pool the rounds. At concurrency 1, where
one request's latency is compared (`p50_ratio_c1`), there are three times as many phases, each a
third as long, so that the servers alternate more often on a noisy machine. Server and client CPU
per request come from /proc and the process's own clock; the service's /metrics gives batch sizes
and queue waits.

Before the load, every dev sentence is sent once to each server (8 at a time, so the service
batches them) and the top labels are compared: disagreements and the largest score difference.

    python benchmarks/serve_throughput.py                   # 2,000 rows, 1 epoch: ~20 min
    python benchmarks/serve_throughput.py --data-dir DIR    # keep (or reuse) the trained model
    python benchmarks/serve_throughput.py --quick           # smoke test: tiny slice, short phases

Prints a table and ends with one line of JSON. Exits non-zero if a run fails. Nothing is written
to the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.train_throughput import (  # noqa: E402
    BASE,
    DEFAULT_DATA,
    MODEL_PACKAGE,
    RunFailed,
    free_port,
    head_lines,
    log_tail,
    upload,
    wait_for_job,
)
from benchmarks.train_throughput import base_env as train_base_env  # noqa: E402

TUTORIAL = REPO / "benchmarks" / "serve_throughput_tutorial.py"
LIBRARIES = ("torch", "transformers", "tokenizers", "fastapi", "uvicorn", "uvloop", "httptools")
CONCURRENCY = (1, 8, 32)
TARGETS = {
    "ratio_c32": 3.0,
    "p50_ratio_c1": 1.10,
    "onnx_ratio_c32": 3.5,
    "onnx_p50_ratio_c1": 0.6,
    "onnx_int8_ratio_c32": 5.0,
}
# Figures whose size must stay within a bound: top labels that differ, score differences, and
# the int8 export's dev accuracy against the fp32 parent's (points).
EXACT_TARGETS = {
    "onnx_top_label_diffs": 0,
    "onnx_max_score_diff": 1e-4,
    "onnx_int8_dev_accuracy_delta": 0.5,
}
CHECK_CONCURRENCY = 8
# At concurrency 1: this many times the rounds, each this many times shorter.
C1_SPLIT = 3
INT8 = {"type": "quantize", "scheme": "int8_dynamic"}
# --quick: train rows, dev rows, epochs; warm-up and window seconds, rounds.
QUICK_ROWS = (64, 64, 1)
QUICK_PHASES = (0.5, 1.5, 1)
TICKS = os.sysconf("SC_CLK_TCK")


def tsv_rows(path: Path) -> list[tuple[str, str]]:
    """(text, label) of an SST-2 TSV (no quote handling: texts contain `"`)."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [(text, label) for text, label in (line.rsplit("\t", 1) for line in lines if line)]


# Processes.


def base_env() -> dict[str, str]:
    """train_throughput's environment (offline, passive OpenMP), less any inherited thread count:
    each server's is set below."""
    env = train_base_env()
    env.pop("OMP_NUM_THREADS", None)
    return env


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_until(ok: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 240
    while not ok():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RunFailed(f"{what} did not start:\n{log_tail(log)}")
        time.sleep(0.3)


def answers(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def child_pid(parent: int, marker: str) -> int | None:
    """The child of `parent` whose command line holds `marker` (the supervisor's API)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and marker.encode() in argv:
            return int(entry.name)
    return None


def process_env(pid: int, *names: str) -> dict[str, str | None]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)
    return {name: env.get(name) for name in names}


@dataclass
class Server:
    """One server under load: where it listens, how a request for a text looks, whose CPU."""

    name: str
    port: int
    pid: int
    path: str
    body: Callable[[str], bytes]
    headers: str = ""
    threads: int = 1
    env: dict[str, str | None] = field(default_factory=dict)
    scrape: Callable[[], dict[str, float]] | None = None

    def request(self, text: str) -> bytes:
        payload = self.body(text)
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{self.headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode("ascii") + payload


@contextmanager
def running_service(data_dir: Path, log: Path) -> Iterator[tuple[httpx.Client, int, int, str]]:
    """`tuneserve up` on `data_dir`; yields a control client (admin key), its port, the pid of
    `tuneserve up` and the key."""
    key = "tsk_" + secrets.token_urlsafe(32)
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = base_env() | {
        "TUNESERVE_BOOTSTRAP_ADMIN_KEY": key,
        "TUNESERVE_RATE_LIMIT_PER_MINUTE": "0",
    }
    argv = [sys.executable, "-m", "app.cli", "up", "--data-dir", str(data_dir), "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=120, headers={"Authorization": f"Bearer {key}"}
    )
    try:
        wait_until(lambda: answers(client, "/healthz"), proc, "the service", log)
        yield client, port, proc.pid, key
    finally:
        client.close()
        stop(proc)


def tutorial_env(model_dir: Path, threads: int | None) -> dict[str, str]:
    env = base_env() | {"MODEL_DIR": str(model_dir)}
    return env if threads is None else env | {"OMP_NUM_THREADS": str(threads)}


def torch_threads(env: dict[str, str]) -> int:
    """torch's intra-op thread count in a new process with this environment."""
    argv = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    return int(subprocess.run(argv, env=env, capture_output=True, check=True).stdout)


@contextmanager
def running_tutorial(env: dict[str, str], log: Path) -> Iterator[tuple[int, int]]:
    """The tutorial app under uvicorn (its defaults); yields its port and pid."""
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "serve_throughput_tutorial:app",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, cwd=TUTORIAL.parent, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            wait_until(lambda: answers(client, "/openapi.json"), proc, log.stem, log)
        yield port, proc.pid
    finally:
        stop(proc)


# The service's control plane: train (or find) the model.


def existing_model(client: httpx.Client) -> dict[str, Any] | None:
    """The newest registered classification model fully fine-tuned from BASE, if any."""
    resp = client.get("/v1/models", params={"task": "classification", "limit": 100})
    resp.raise_for_status()
    for model in resp.json()["data"]:
        if model["base_model"] == BASE and model["artifact"] == "full":
            found: dict[str, Any] = model
            return found
    return None


def train_model(
    client: httpx.Client, train: Path, dev: Path, *, epochs: int, data_dir: Path
) -> dict[str, Any]:
    train_ds, dev_ds = upload(client, train), upload(client, dev)
    spec = {
        "task": "classification",
        "base_model": BASE,
        "train_dataset": train_ds["id"],
        "validation_dataset": dev_ds["id"],
        "method": {"type": "full"},
        "hyperparameters": {"epochs": epochs},
    }
    return run_job(client, spec, "the job", data_dir)


def run_job(
    client: httpx.Client, spec: dict[str, Any], what: str, data_dir: Path
) -> dict[str, Any]:
    """Submit a job, wait for it, and return the model it registered."""
    resp = client.post("/v1/jobs", json=spec)
    if resp.status_code != 201:
        raise RunFailed(f"submitting {what}: {resp.status_code} {resp.text}")
    job = wait_for_job(client, resp.json()["id"])
    if job["status"] != "succeeded":
        worker = log_tail(data_dir / "logs" / "worker.log")
        raise RunFailed(f"{what} ended {job['status']}: {job.get('error')}\n{worker}")
    model: dict[str, Any] = client.get(f"/v1/models/{job['model_id']}").json()
    return model


def derived_model(
    client: httpx.Client,
    parent: dict[str, Any],
    data_dir: Path,
    *,
    method: dict[str, Any],
    artifact: str,
) -> dict[str, Any]:
    """`parent` quantized or exported as `method` says: a model already registered with that
    artifact, or a new job's (which evaluates both on the parent's validation rows before
    registering it)."""
    resp = client.get("/v1/models", params={"task": "classification", "limit": 100})
    resp.raise_for_status()
    for model in resp.json()["data"]:
        if model["parent_model"] == parent["id"] and model["artifact"] == artifact:
            found: dict[str, Any] = model
            return found
    spec = {"task": "classification", "base_model": f"model:{parent['id']}", "method": method}
    return run_job(client, spec, f"the {method['type']} job ({artifact})", data_dir)


# The service's arms beside fp32 torch: name -> (job method, artifact).
DERIVED = {
    "service_int8": (INT8, "int8_dynamic"),
    "service_onnx": ({"type": "export", "format": "onnx", "quantization": "none"}, "onnx"),
    "service_onnx_int8": (
        {"type": "export", "format": "onnx", "quantization": "int8"},
        "onnx_int8",
    ),
}


METRIC_LINE = re.compile(r"^(tuneserve_[a-z_]+)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN)$")
SUMMED = {
    "tuneserve_batch_size_sum": "batch_rows",
    "tuneserve_batch_size_count": "model_calls",
    "tuneserve_batch_queue_wait_seconds_sum": "queue_wait_s",
    "tuneserve_batch_queue_wait_seconds_count": "queue_waits",
    "tuneserve_predict_duration_seconds_sum": "predict_s",
    "tuneserve_predict_duration_seconds_count": "predicts",
    "tuneserve_http_request_duration_seconds_sum": "http_s",
    "tuneserve_http_request_duration_seconds_count": "https",
}


def scrape(client: httpx.Client) -> dict[str, float]:
    """Totals of the service's batching and latency counters (the predict route's only)."""
    resp = client.get("/metrics")
    resp.raise_for_status()
    totals = dict.fromkeys(SUMMED.values(), 0.0)
    for line in resp.text.splitlines():
        match = METRIC_LINE.match(line)
        if match is None or match[1] not in SUMMED:
            continue
        if match[1].startswith("tuneserve_http") and "predict" not in (match[2] or ""):
            continue
        totals[SUMMED[match[1]]] += float(match[3])
    return totals


# The load client: raw HTTP/1.1 on asyncio, one keep-alive connection per client.


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight at a time. Responses are
    framed by Content-Length (what uvicorn sends for a JSON body); anything else is an error."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body_start = -1
        self.end = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.end < 0:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self.buffer[:head_end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                self._fail(ConnectionError(f"no Content-Length in {head[:200]!r}"))
                return
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end > 0 else None])
            self.body_start = head_end + 4
            self.end = self.body_start + length
        if len(self.buffer) >= self.end and self.waiter is not None:
            status = int(self.buffer[9:12])
            body = bytes(self.buffer[self.body_start : self.end])
            del self.buffer[: self.end]
            self.end = -1
            waiter, self.waiter = self.waiter, None
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.waiter = None

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter


async def connect(port: int, count: int) -> list[Connection]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(count):
        _, conn = await loop.create_connection(Connection, "127.0.0.1", port)
        assert conn.transport is not None
        conn.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        conns.append(conn)
    return conns


def close(conns: list[Connection]) -> None:
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


async def closed_loop(
    port: int, requests: list[bytes], *, concurrency: int, warmup: float, seconds: float
) -> tuple[list[tuple[float, float]], list[bytes]]:
    """Each of `concurrency` clients sends its next request when its last was answered, until
    one is answered after the window closes. Returns (sent, answered) times and error bodies."""
    conns = await connect(port, concurrency)
    clock = time.perf_counter
    n = len(requests)
    counter = itertools.count()
    times: list[tuple[float, float]] = []
    errors: list[bytes] = []
    window_end = clock() + warmup + seconds

    async def client(conn: Connection) -> None:
        while True:
            raw = requests[next(counter) % n]
            sent = clock()
            status, body = await conn.request(raw)
            done = clock()
            times.append((sent, done))
            if status != 200:
                errors.append(body)
            if done >= window_end or len(errors) > 10:
                return

    try:
        await asyncio.gather(*(client(c) for c in conns))
    finally:
        close(conns)
    return times, errors


async def each_once(port: int, requests: list[bytes], *, concurrency: int) -> list[bytes]:
    """Every request once, `concurrency` at a time; the bodies, in request order."""
    conns = await connect(port, concurrency)
    bodies: list[bytes] = [b""] * len(requests)
    indexes = iter(range(len(requests)))

    async def client(conn: Connection) -> None:
        for i in indexes:
            status, body = await conn.request(requests[i])
            if status != 200:
                raise RunFailed(f"HTTP {status}: {body[:500]!r}")
            bodies[i] = body

    try:
        await asyncio.gather(*(client(c) for c in conns))
    finally:
        close(conns)
    return bodies


def event_loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    try:
        import uvloop
    except ImportError:
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


LOOP_FACTORY, LOOP_NAME = event_loop_factory()


def run_async(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=LOOP_FACTORY) as runner:
        return runner.run(coro)


# Measurement.


@dataclass
class Phase:
    """What one server did at one concurrency in one round."""

    window_s: float
    elapsed_s: float
    latencies: list[float]
    requests: int
    server_cpu_s: float
    client_cpu_s: float
    load_1m: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.window_s


def measure(
    server: Server, requests: list[bytes], *, concurrency: int, warmup: float, seconds: float
) -> Phase:
    before = server.scrape() if server.scrape else {}
    cpu0, own0 = cpu_seconds(server.pid), time.process_time()
    start = time.perf_counter()
    times, errors = run_async(
        closed_loop(server.port, requests, concurrency=concurrency, warmup=warmup, seconds=seconds)
    )
    elapsed = time.perf_counter() - start
    cpu1, own1 = cpu_seconds(server.pid), time.process_time()
    if errors:
        raise RunFailed(f"{server.name} answered {len(errors)} errors, e.g. {errors[0][:500]!r}")
    after = server.scrape() if server.scrape else {}
    lo, hi = start + warmup, start + warmup + seconds
    latencies = [done - sent for sent, done in times if lo <= done < hi]
    return Phase(
        window_s=seconds,
        elapsed_s=elapsed,
        latencies=latencies,
        requests=len(times),
        server_cpu_s=cpu1 - cpu0,
        client_cpu_s=own1 - own0,
        load_1m=os.getloadavg()[0],
        metrics={k: after[k] - before.get(k, 0.0) for k in after},
    )


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def pooled(phases: list[Phase]) -> dict[str, Any]:
    """Rounds of one server at one concurrency, pooled."""
    latencies = sorted(x for p in phases for x in p.latencies)
    window = sum(p.window_s for p in phases)
    elapsed = sum(p.elapsed_s for p in phases)
    requests = sum(p.requests for p in phases)
    out: dict[str, Any] = {
        "rps": round(len(latencies) / window, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
        "measured": len(latencies),
        "rps_by_round": [round(p.rps, 1) for p in phases],
        "server_cpu_ms_per_req": round(sum(p.server_cpu_s for p in phases) / requests * 1000, 2),
        "client_cpu_ms_per_req": round(sum(p.client_cpu_s for p in phases) / requests * 1000, 3),
        # Cores the server process kept busy: CPU seconds over wall seconds of the phases.
        "server_cores": round(sum(p.server_cpu_s for p in phases) / elapsed, 2),
        "load_1m": [round(p.load_1m, 2) for p in phases],
    }
    metrics = {k: sum(p.metrics.get(k, 0.0) for p in phases) for k in SUMMED.values()}
    if metrics["model_calls"]:
        out["mean_batch_rows"] = round(metrics["batch_rows"] / metrics["model_calls"], 2)
        out["model_calls_per_s"] = round(metrics["model_calls"] / elapsed, 1)
    if metrics["queue_waits"]:
        out["mean_queue_wait_ms"] = round(metrics["queue_wait_s"] / metrics["queue_waits"] * 1e3, 2)
    if metrics["predicts"]:
        out["mean_predict_ms"] = round(metrics["predict_s"] / metrics["predicts"] * 1000, 2)
    if metrics["https"]:
        out["mean_server_http_ms"] = round(metrics["http_s"] / metrics["https"] * 1000, 2)
    return out


def compare(
    service_bodies: list[bytes], tutorial_bodies: list[bytes], gold: list[str]
) -> dict[str, Any]:
    """Top labels of the two servers, sentence by sentence."""
    disagreements, max_diff, right = 0, 0.0, [0, 0]
    for s_body, t_body, label in zip(service_bodies, tutorial_bodies, gold, strict=True):
        s = json.loads(s_body)["predictions"][0][0]
        t = json.loads(t_body)
        if s["label"] != t["label"]:
            disagreements += 1
        else:
            max_diff = max(max_diff, abs(s["score"] - t["score"]))
        right[0] += s["label"] == label
        right[1] += t["label"] == label
    return {
        "checked": len(gold),
        "disagreements": disagreements,
        "max_score_diff": float(f"{max_diff:.3g}"),
        "service_dev_accuracy": round(right[0] / len(gold), 4),
        "tutorial_dev_accuracy": round(right[1] / len(gold), 4),
    }


def compare_services(
    bodies: list[bytes], reference: list[bytes], gold: list[str]
) -> dict[str, Any]:
    """Top labels and scores of one service arm against another's (the fp32 torch model),
    sentence by sentence; the largest score difference is over every label of every sentence."""
    disagreements, max_diff, right = 0, 0.0, [0, 0]
    for body, ref, label in zip(bodies, reference, gold, strict=True):
        got = json.loads(body)["predictions"][0]
        want = json.loads(ref)["predictions"][0]
        if got[0]["label"] != want[0]["label"]:
            disagreements += 1
        scores = {x["label"]: x["score"] for x in want}
        max_diff = max([max_diff] + [abs(x["score"] - scores[x["label"]]) for x in got])
        right[0] += got[0]["label"] == label
        right[1] += want[0]["label"] == label
    return {
        "checked": len(gold),
        "top_label_diffs": disagreements,
        "max_score_diff": float(f"{max_diff:.3g}"),
        "dev_accuracy": round(right[0] / len(gold), 4),
        "reference_dev_accuracy": round(right[1] / len(gold), 4),
        "dev_accuracy_delta_points": round((right[0] - right[1]) / len(gold) * 100, 2),
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (*LIBRARIES, MODEL_PACKAGE):
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return out


# Output.


def print_table(f: dict[str, Any], names: list[str]) -> None:
    print(
        f"\n{'server':24} {'conc':>4} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv cpu ms/req':>14} {'srv cores':>9} {'cli cpu ms/req':>14} {'batch':>6} "
        f"{'queue ms':>8} {'load 1m':>12}"
    )
    for name in names:
        for c in CONCURRENCY:
            r = f[name][f"c{c}"]
            load = "/".join(f"{x:.1f}" for x in r["load_1m"])
            print(
                f"{name:24} {c:>4} {r['rps']:>7} {r['p50_ms']:>7} {r['p99_ms']:>7} "
                f"{r['server_cpu_ms_per_req']:>14} {r['server_cores']:>9} "
                f"{r['client_cpu_ms_per_req']:>14} "
                f"{r.get('mean_batch_rows', '-')!s:>6} {r.get('mean_queue_wait_ms', '-')!s:>8} "
                f"{load:>12}"
            )
    check = f["check"]
    print(
        f"\npredictions: {check['disagreements']} of {check['checked']} dev sentences disagree on "
        f"the top label; largest score difference {check['max_score_diff']}; dev accuracy "
        f"service {check['service_dev_accuracy']}, tutorial {check['tutorial_dev_accuracy']}"
    )
    if f.get("int8_check"):
        i8 = f["int8_check"]
        print(
            f"int8: {i8['disagreements']} of {i8['checked']} top labels differ from the fp32 "
            f"tutorial's; dev accuracy {i8['service_dev_accuracy']}; requests/s at 32 "
            f"{f['int8_ratio_c32']}x the tutorial's ({f['int8_over_fp32_c32']}x the fp32 "
            f"service's), p50 at 1 {f['int8_p50_ratio_c1']}x"
        )
    for name, c in (f.get("derived_checks") or {}).items():
        print(
            f"{name}: {c['top_label_diffs']} of {c['checked']} top labels differ from the fp32 "
            f"torch model's; largest score difference {c['max_score_diff']}; dev accuracy "
            f"{c['dev_accuracy']} ({c['dev_accuracy_delta_points']:+} points)"
        )
    print("targets met: " + ", ".join(f"{k} {v}" for k, v in f["targets_met"].items()))
    threads = ", ".join(f"{name} {n}" for name, n in f["threads"].items())
    load = f["load_avg_1m"]
    print(
        f"ratio_c32 = {f['ratio_c32']} (target >= {TARGETS['ratio_c32']}), "
        f"p50_ratio_c1 = {f['p50_ratio_c1']} (target <= {TARGETS['p50_ratio_c1']})\n"
        f"torch threads: {threads}. Load average (1 min): {load['start']} at the start, "
        f"{load['end']} at the end, on {f['cpus']} CPUs shared with other work."
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with SST-2's TSVs")
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument(
        "--data-dir",
        type=Path,
        help="the service's data dir, kept afterwards (default: a temporary one); one that "
        "already holds a full fine-tune of the base is served without training",
    )
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before each window")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    ap.add_argument("--rounds", type=int, default=2, help="phases per server and concurrency")
    ap.add_argument(
        "--no-default-threads",
        action="store_true",
        help="leave out the tutorial with torch's default threads",
    )
    ap.add_argument("--no-int8", action="store_true", help="leave out the torch int8 model")
    ap.add_argument("--no-onnx", action="store_true", help="leave out the ONNX exports")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 64 train rows, 64 dev sentences, 1 epoch, 1.5 s phases, 1 round",
    )
    args = ap.parse_args()
    train_rows, dev_rows, epochs = args.train_rows, None, args.epochs
    warmup, seconds, rounds = args.warmup, args.seconds, args.rounds
    if args.quick:
        train_rows, dev_rows, epochs = QUICK_ROWS
        warmup, seconds, rounds = QUICK_PHASES
    for name in ("train.tsv", "dev.tsv"):
        if not (args.data / name).exists():
            print(f"SST-2 not found: {args.data / name} (see --data)", file=sys.stderr)
            return 2
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        print(f"the {MODEL_PACKAGE} package (the base's weights) is missing", file=sys.stderr)
        return 2

    load = {"start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="serve-throughput-") as name, ExitStack() as stack:
        tmp = Path(name)
        data_dir = (args.data_dir or tmp / "service-data").resolve()
        train, dev = tmp / f"sst2-train-{train_rows}.tsv", tmp / "sst2-dev.tsv"
        head_lines(args.data / "train.tsv", train, train_rows)
        head_lines(args.data / "dev.tsv", dev, dev_rows)
        dev_texts, gold = zip(*tsv_rows(dev), strict=True)
        try:
            client, port, up_pid, key = stack.enter_context(
                running_service(data_dir, tmp / "tuneserve-up.log")
            )
            model = existing_model(client) if args.data_dir else None
            if model is None:
                print(f"training: {train_rows} SST-2 rows x {epochs} epochs, full", flush=True)
                model = train_model(client, train, dev, epochs=epochs, data_dir=data_dir)
            else:
                print(f"serving {model['id']} from {data_dir} (no training)", flush=True)
            load["after_training"] = round(os.getloadavg()[0], 2)
            trained_rows = client.get(f"/v1/datasets/{model['train_dataset']}").json()["num_rows"]
            model_dir = data_dir / "models" / model["id"]
            api_pid = child_pid(up_pid, "api")
            if api_pid is None:
                raise RunFailed("the service's API process was not found")
            service = Server(
                "service",
                port=port,
                pid=api_pid,
                path="/v1/predict/classification",
                body=lambda t: json.dumps({"model": model["id"], "inputs": [t]}).encode(),
                headers=f"Authorization: Bearer {key}\r\n",
                env=process_env(api_pid, "OMP_NUM_THREADS", "TUNESERVE_INFERENCE_THREADS"),
                scrape=lambda: scrape(client),
            )
            service.threads = int(service.env["TUNESERVE_INFERENCE_THREADS"] or 0)
            servers = [service]
            derived: dict[str, dict[str, Any]] = {}
            arms = [
                name
                for name in DERIVED
                if not (args.no_int8 and name == "service_int8")
                and not (args.no_onnx and name.startswith("service_onnx"))
            ]
            for name in arms:
                method, artifact = DERIVED[name]
                derived[name] = derived_model(
                    client, model, data_dir, method=method, artifact=artifact
                )
                derived_id = derived[name]["id"]
                servers.append(
                    Server(
                        name,
                        port=port,
                        pid=api_pid,
                        path="/v1/predict/classification",
                        body=lambda t, i=derived_id: json.dumps(
                            {"model": i, "inputs": [t], "top_k": None}
                        ).encode(),
                        headers=f"Authorization: Bearer {key}\r\n",
                        env=service.env,
                        threads=service.threads,
                        scrape=lambda: scrape(client),
                    )
                )
            int8 = derived.get("service_int8")
            variants: list[tuple[str, int | None]] = [("tutorial", 1)]
            if not args.no_default_threads:
                variants.append(("tutorial_default_threads", None))
            for label, threads in variants:
                env = tutorial_env(model_dir, threads)
                t_port, pid = stack.enter_context(running_tutorial(env, tmp / f"{label}.log"))
                servers.append(
                    Server(
                        label,
                        port=t_port,
                        pid=pid,
                        path="/predict",
                        body=lambda t: json.dumps({"text": t}).encode(),
                        threads=torch_threads(env),
                        env=process_env(pid, "OMP_NUM_THREADS"),
                    )
                )
            by_name = {s.name: s for s in servers}

            print(f"checking predictions on {len(dev_texts)} dev sentences", flush=True)
            bodies = {
                s.name: run_async(
                    each_once(
                        s.port,
                        [s.request(t) for t in dev_texts],
                        concurrency=CHECK_CONCURRENCY,
                    )
                )
                for s in servers
                if s.name in ("service", "tutorial", *DERIVED)
            }
            check = compare(bodies["service"], bodies["tutorial"], list(gold))
            int8_check = (
                compare(bodies["service_int8"], bodies["tutorial"], list(gold))
                if "service_int8" in bodies
                else None
            )
            # Every derived arm against the fp32 torch model of the same service.
            every_label = Server(
                "service_every_label",
                port=port,
                pid=api_pid,
                path="/v1/predict/classification",
                body=lambda t: json.dumps(
                    {"model": model["id"], "inputs": [t], "top_k": None}
                ).encode(),
                headers=f"Authorization: Bearer {key}\r\n",
                env=service.env,
            )
            reference = run_async(
                each_once(
                    port,
                    [every_label.request(t) for t in dev_texts],
                    concurrency=CHECK_CONCURRENCY,
                )
            )
            checks = {
                name: compare_services(bodies[name], reference, list(gold)) for name in derived
            }

            requests = {s.name: [s.request(t) for t in dev_texts] for s in servers}
            phases: dict[str, dict[int, list[Phase]]] = {s.name: {} for s in servers}
            for c in CONCURRENCY:
                split = C1_SPLIT if c == 1 else 1
                for r in range(rounds * split):
                    for s in servers if r % 2 == 0 else servers[::-1]:
                        phase = measure(
                            s,
                            requests[s.name],
                            concurrency=c,
                            warmup=warmup / split,
                            seconds=seconds / split,
                        )
                        phases[s.name].setdefault(c, []).append(phase)
                        print(
                            f"  c={c:<2} round {r + 1} {s.name:24} {phase.rps:7.1f} req/s  "
                            f"p50 {percentile(sorted(phase.latencies), 0.5) * 1e3:6.1f} ms  "
                            f"load {phase.load_1m:.2f}",
                            flush=True,
                        )
        except RunFailed as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
        load["end"] = round(os.getloadavg()[0], 2)

    figures: dict[str, Any] = {"benchmark": "serve_throughput", "quick": args.quick}
    results = {name: {f"c{c}": pooled(ps) for c, ps in per.items()} for name, per in phases.items()}
    ours, theirs = results["service"], results["tutorial"]
    figures |= {
        "ratio_c32": round(ours["c32"]["rps"] / theirs["c32"]["rps"], 2),
        "p50_ratio_c1": round(ours["c1"]["p50_ms"] / theirs["c1"]["p50_ms"], 2),
    }
    if "service_int8" in results:
        int8_results = results["service_int8"]
        figures |= {
            "int8_ratio_c32": round(int8_results["c32"]["rps"] / theirs["c32"]["rps"], 2),
            "int8_p50_ratio_c1": round(int8_results["c1"]["p50_ms"] / theirs["c1"]["p50_ms"], 2),
            "int8_over_fp32_c32": round(int8_results["c32"]["rps"] / ours["c32"]["rps"], 2),
        }
    if "service_onnx" in results:
        onnx_results, onnx_check = results["service_onnx"], checks["service_onnx"]
        figures |= {
            "onnx_ratio_c32": round(onnx_results["c32"]["rps"] / theirs["c32"]["rps"], 2),
            "onnx_p50_ratio_c1": round(onnx_results["c1"]["p50_ms"] / theirs["c1"]["p50_ms"], 2),
            "onnx_top_label_diffs": onnx_check["top_label_diffs"],
            "onnx_max_score_diff": onnx_check["max_score_diff"],
        }
    if "service_onnx_int8" in results:
        q = results["service_onnx_int8"]
        figures |= {
            "onnx_int8_ratio_c32": round(q["c32"]["rps"] / theirs["c32"]["rps"], 2),
            "onnx_int8_p50_ratio_c1": round(q["c1"]["p50_ms"] / theirs["c1"]["p50_ms"], 2),
            "onnx_int8_dev_accuracy_delta": checks["service_onnx_int8"][
                "dev_accuracy_delta_points"
            ],
        }
    met = {
        name: (figures[name] >= target if name.endswith("c32") else figures[name] <= target)
        for name, target in TARGETS.items()
        if name in figures
    }
    for name, most in EXACT_TARGETS.items():
        if name in figures:
            met[name] = abs(figures[name]) <= most
    figures["targets_met"] = met
    figures["meets_targets"] = all(met.values())
    figures |= {
        "targets": TARGETS,
        **results,
        "check": check,
        "int8_check": int8_check,
        "derived_checks": checks,
        "derived_models": {
            name: {
                "id": m["id"],
                "artifact": m["artifact"],
                "metrics": m["metrics"],
                "parent_metrics": m["parent_metrics"],
            }
            for name, m in derived.items()
        },
        "int8_model": None
        if int8 is None
        else {
            "id": int8["id"],
            "metrics": int8["metrics"],
            "parent_metrics": int8["parent_metrics"],
        },
        "disagreements": check["disagreements"],
        "max_score_diff": check["max_score_diff"],
        "threads": {name: by_name[name].threads for name in results},
        "thread_env": {name: by_name[name].env for name in results},
        "model": model["id"],
        "train_rows": trained_rows,
        "epochs": model["hyperparameters"].get("epochs"),
        "dev_sentences": len(dev_texts),
        "warmup_s": warmup,
        "seconds_per_phase": seconds,
        "rounds": rounds,
        "client": f"raw HTTP/1.1 keep-alive on {LOOP_NAME}, in the benchmark process",
        "load_avg_1m": load,
        "cpus": os.cpu_count(),
        "versions": versions(),
    }
    print_table(figures, list(results))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
