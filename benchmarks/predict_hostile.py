"""/predict under fuzzing and mixed concurrent load, with real models of every task and kind.

Starts `tuneserve up` (a temporary data dir, or --data-dir to keep and reuse the models), and
fine-tunes all-MiniLM-L6-v2 briefly on slices of the real data beside the repository: SST-2 for
classification, CoNLL-2003 for NER, SQuAD v1.1 (split by article) for QA. For each task it
registers four model kinds: `full`, a LoRA `adapter` (served on the shared base), a LoRA adapter
`merged` at registration, and an `int8_dynamic` copy of the full model (a quantize job). The models
are barely trained (--steps): the point is real tokenizers, real architectures and real weights
behind the route, not accuracy.

Then two phases, each with its own keep-alive connections:

1. fuzz: hypothesis generates request bodies for the three /v1/predict routes (strings from every
   Unicode category, lone surrogates included, control characters, empty and whitespace-only
   text, very long words, real sentences repeated, nested/mistyped JSON, wrong and huge top_k,
   extra and missing fields, models of the wrong task and unknown ones) and sends them
   --clients at a time. Each answer must be a 2xx or a 4xx with the usual error body; a 5xx or a
   dropped connection is counted as a failure (with its body, printed once per kind).
2. load: --load-clients clients (8) for --minutes (10), each sending a random task, model kind and
   input of varied length (real sentences, 1-60 of them joined; long QA contexts; 5% hostile
   inputs) as fast as it is answered. Counts statuses, dropped connections and latencies.

    python benchmarks/predict_hostile.py                              # 10,000 cases + 10 min
    python benchmarks/predict_hostile.py --data-dir /tmp/ph --cases 2000 --minutes 1
    python benchmarks/predict_hostile.py --quick                      # smoke test

Prints figures and ends with one line of JSON. Exits 1 if any 5xx or dropped connection was seen.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.ner_conll import head_sentences  # noqa: E402
from benchmarks.qa_squad import split_by_article  # noqa: E402
from benchmarks.serve_throughput import running_service, tsv_rows  # noqa: E402
from benchmarks.train_throughput import BASE, DEFAULT_DATA, RunFailed, wait_for_job  # noqa: E402

DATA = DEFAULT_DATA.parent
TASKS = ("classification", "ner", "qa")
KINDS = ("full", "adapter", "merged", "int8")
MANIFEST = "predict_hostile_models.json"
HOSTILE_STRINGS = [
    "", " ", "\t\n", "\x00", "\ud800", "a\udfffb", "\ufffd", "\u200b\u200d", "\ufeff",
    "\u202e evil \u202c", "e\u0301" * 500, "\U0001f469\u200d\U0001f4bb" * 50, "x" * 5000,
    "Peter lives in Paris " * 60, "=SUM(A1)", "<script>alert(1)</script>", "\\u0000",
    "\x1b[31m", "\r\n" * 100, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "null", "[CLS] [SEP] [PAD] [MASK] [UNK]", "##ing",
]  # fmt: skip


# Models.


def upload(client: httpx.Client, task: str, name: str, content: bytes) -> str:
    resp = client.post(
        "/v1/datasets", data={"task": task}, files={"file": (name, content, "text/plain")}
    )
    if resp.status_code != 201:
        raise RunFailed(f"uploading {name}: {resp.status_code} {resp.text}")
    return str(resp.json()["id"])


def datasets(client: httpx.Client, rows: int, work: Path) -> dict[str, tuple[str, str]]:
    """(train, validation) dataset ids per task, from slices of the real data."""
    sst2 = (DATA / "sst2" / "train.tsv").read_bytes().splitlines(keepends=True)
    conll = (DATA / "conll2003" / "eng.train").read_bytes()
    testa = (DATA / "conll2003" / "eng.testa").read_bytes()
    train_qa, dev_qa = split_by_article(
        DATA / "squad_v1.1" / "dev-v1.1.json", work, train=1, held_out=1
    )
    return {
        "classification": (
            upload(client, "classification", "train.tsv", b"".join(sst2[: rows + 1])),
            upload(client, "classification", "dev.tsv", sst2[0] + b"".join(sst2[-100:])),
        ),
        "ner": (
            upload(client, "ner", "train.conll", head_sentences(conll, rows)),
            upload(client, "ner", "dev.conll", head_sentences(testa, 100)),
        ),
        "qa": (
            upload(client, "qa", "train.json", train_qa.read_bytes()),
            upload(client, "qa", "dev.json", dev_qa.read_bytes()),
        ),
    }


def run_job(client: httpx.Client, spec: dict[str, Any], what: str) -> str:
    resp = client.post("/v1/jobs", json=spec)
    if resp.status_code != 201:
        raise RunFailed(f"submitting {what}: {resp.status_code} {resp.text}")
    job = wait_for_job(client, resp.json()["id"])
    if job["status"] != "succeeded":
        raise RunFailed(f"{what} ended {job['status']}: {job.get('error')}")
    print(f"  {what}: model {job['model_id']}", flush=True)
    return str(job["model_id"])


def train_models(
    client: httpx.Client, data_dir: Path, *, rows: int, steps: int
) -> dict[str, dict[str, str]]:
    """model ids by task and kind: read from the data dir's manifest, or trained now."""
    manifest = data_dir / MANIFEST
    if manifest.exists():
        found: dict[str, dict[str, str]] = json.loads(manifest.read_text())
        if all(
            client.get(f"/v1/models/{m}").status_code == 200
            for k in found.values()
            for m in k.values()
        ):
            return found
    with tempfile.TemporaryDirectory() as work:
        ids = datasets(client, rows, Path(work))
    hyper = {"epochs": 1, "max_steps": steps, "max_length": 256}
    models: dict[str, dict[str, str]] = {}
    for task in TASKS:
        train, dev = ids[task]
        common = {"task": task, "base_model": BASE, "train_dataset": train,
                  "validation_dataset": dev, "hyperparameters": hyper}  # fmt: skip
        full = run_job(client, common | {"method": {"type": "full"}}, f"{task} full")
        models[task] = {
            "full": full,
            "adapter": run_job(client, common | {"method": {"type": "lora"}}, f"{task} adapter"),
            "merged": run_job(
                client,
                common | {"method": {"type": "lora", "merge_adapter": True}},
                f"{task} merged",
            ),
            "int8": run_job(
                client,
                {
                    "task": task,
                    "base_model": f"model:{full}",
                    "method": {"type": "quantize", "scheme": "int8_dynamic"},
                },
                f"{task} int8",
            ),  # fmt: skip
        }
    manifest.write_text(json.dumps(models))
    return models


# Inputs.


@dataclass
class Texts:
    sentences: list[str]
    contexts: list[tuple[str, str]]

    @classmethod
    def load(cls) -> Texts:
        sentences = [text for text, _ in tsv_rows(DATA / "sst2" / "dev.tsv")]
        doc = json.loads((DATA / "squad_v1.1" / "dev-v1.1.json").read_text(encoding="utf-8"))
        contexts = [
            (qa["question"], paragraph["context"])
            for article in doc["data"][:8]
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"][:2]
        ]
        return cls(sentences, contexts)

    def varied(self, rnd: random.Random) -> str:
        """One real sentence, or 1-60 of them joined (NER's raw text, long classification input)."""
        n = 1 if rnd.random() < 0.5 else rnd.randint(1, 60)
        return " ".join(rnd.choice(self.sentences) for _ in range(n))[:19_000]


def weighted(*choices: tuple[int, Any]) -> Any:
    """A strategy drawing from `choices`' strategies in proportion to their weights (hypothesis'
    one_of does not weight repeated branches)."""
    from hypothesis import strategies as st

    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(pool) - 1).flatmap(lambda i: pool[i])


def fuzz_strategy(models: dict[str, dict[str, str]], texts: Texts) -> Any:
    """(task, body) pairs: bodies near each route's schema, with hostile strings and shapes."""
    from hypothesis import strategies as st

    any_char = st.characters(codec=None, exclude_categories=())  # lone surrogates included
    real = st.sampled_from(texts.sentences)
    text = weighted(
        (4, real),
        (2, st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)),
        (1, st.text(any_char, max_size=40)),
        (1, st.sampled_from(HOSTILE_STRINGS)),
        (1, st.builds(lambda a, b: a + b, real, st.text(any_char, max_size=8))),
    )
    junk = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(any_char, max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=6,
    )
    top_k = st.one_of(
        st.none(), st.integers(-2, 3), st.sampled_from([0, 100, 10**12, -(10**12)]), junk
    )
    small_k = st.none() | st.integers(1, 3)
    model_ref = {
        task: st.one_of(
            st.sampled_from(sorted(models[task].values())),
            st.sampled_from(sorted(m for t in models if t != task for m in models[t].values())),
            st.sampled_from(["", "mdl_unknown", "../etc/passwd", "\ud800"]),
        )
        for task in TASKS
    }
    item = {
        "classification": weighted(
            (4, text),
            (3, st.fixed_dictionaries({"text": text}, optional={"text_pair": st.none() | text})),
            (1, junk),
        ),
        "ner": weighted(
            (5, text),
            (2, st.fixed_dictionaries({"tokens": st.lists(text, max_size=30)})),
            (1, junk),
        ),
        "qa": st.one_of(
            st.fixed_dictionaries({"question": text, "context": text}),
            st.builds(
                lambda qc: {"question": qc[0], "context": qc[1]}, st.sampled_from(texts.contexts)
            ),
            st.builds(
                lambda qc, q: {"question": q, "context": qc[1]},
                st.sampled_from(texts.contexts),
                text,
            ),
            junk,
        ),
    }

    def body(task: str) -> Any:
        weighted_model = weighted(
            (8, st.sampled_from(sorted(models[task].values()))), (1, model_ref[task])
        )
        fields = {
            "model": weighted_model,
            "inputs": weighted((9, st.lists(item[task], min_size=1, max_size=3)), (1, st.just([]))),
        }
        valid = st.fixed_dictionaries(
            fields, optional={"top_k": weighted((4, small_k), (1, top_k))}
        )
        extra = st.builds(lambda b, k, v: b | {k: v}, valid, st.text(max_size=6), junk)
        missing = st.builds(
            lambda b, k: {x: y for x, y in b.items() if x != k},
            valid,
            st.sampled_from(["model", "inputs"]),
        )
        return st.tuples(st.just(task), weighted((12, valid), (1, extra), (1, missing), (1, junk)))

    return st.one_of(*(body(task) for task in TASKS))


# Clients.


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    dropped: int = 0
    malformed: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, client: httpx.Client, task: str, body: Any) -> None:
        payload = json.dumps(body, ensure_ascii=True).encode()
        started = time.perf_counter()
        try:
            resp = client.post(f"/v1/predict/{task}", content=payload,
                               headers={"Content-Type": "application/json"})  # fmt: skip
        except httpx.TransportError as exc:
            with self.lock:
                self.dropped += 1
                self.failures.setdefault(f"dropped {type(exc).__name__}", payload[:300].decode())
            return
        elapsed = time.perf_counter() - started
        with self.lock:
            self.statuses[resp.status_code] += 1
            self.latencies.append(elapsed)
            well_formed = self._well_formed(resp)
            self.malformed += not well_formed
            if resp.status_code >= 500 or not well_formed:
                key = f"{task} {resp.status_code} {resp.text[:120]}"
                self.failures.setdefault(key, payload[:300].decode())

    @staticmethod
    def _well_formed(resp: httpx.Response) -> bool:
        try:
            body = resp.json()
        except ValueError:
            return False
        if resp.status_code < 300:
            return isinstance(body.get("predictions"), list)
        return isinstance(body.get("error"), dict) and bool(body["error"].get("message"))

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if code >= 500)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None  # noqa: E731
        return {
            "requests": sum(self.statuses.values()) + self.dropped,
            "statuses": dict(sorted(self.statuses.items())),
            "5xx": self.server_errors,
            "dropped_connections": self.dropped,
            "malformed": self.malformed,
            "p50_ms": pick(0.5),
            "p99_ms": pick(0.99),
        }


def fuzz(base_url: str, key: str, strategy: Any, *, cases: int, clients: int, seed: int) -> Tally:
    """`cases` hypothesis-generated bodies, sent `clients` at a time on keep-alive connections."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    generated: list[tuple[str, Any]] = []

    @hypothesis_seed(seed)
    @settings(max_examples=cases, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def collect(case: tuple[str, Any]) -> None:
        generated.append(case)

    collect()
    while len(generated) < cases:  # hypothesis may stop early on a small space; repeat its cases
        generated += generated[: cases - len(generated)]
    tally = Tally()
    chunks = [generated[i::clients] for i in range(clients)]

    def run(chunk: list[tuple[str, Any]]) -> None:
        with _client(base_url, key) as client:
            for task, body in chunk:
                tally.send(client, task, body)

    _in_threads([lambda c=c: run(c) for c in chunks])
    return tally


def load(
    base_url: str, key: str, models: dict[str, dict[str, str]], texts: Texts,
    *, clients: int, seconds: float, seed: int,
) -> Tally:  # fmt: skip
    """`clients` closed-loop clients for `seconds`: random task, kind and input length."""
    tally = Tally()
    deadline = time.monotonic() + seconds

    def run(index: int) -> None:
        rnd = random.Random(seed + index)
        with _client(base_url, key) as client:
            while time.monotonic() < deadline:
                task = rnd.choice(TASKS)
                body = {
                    "model": models[task][rnd.choice(KINDS)],
                    "inputs": _inputs(task, texts, rnd),
                }
                tally.send(client, task, body)

    _in_threads([lambda i=i: run(i) for i in range(clients)])
    return tally


def _inputs(task: str, texts: Texts, rnd: random.Random) -> list[Any]:
    n = rnd.choice((1, 1, 1, 2, 4, 8))
    out: list[Any] = []
    for _ in range(n):
        if rnd.random() < 0.05:
            out.append(
                rnd.choice(HOSTILE_STRINGS)
                if task != "qa"
                else {"question": rnd.choice(HOSTILE_STRINGS), "context": "x"}
            )
        elif task == "qa":
            question, context = rnd.choice(texts.contexts)
            repeat = rnd.choice((1, 1, 2, 5))
            out.append({"question": question, "context": " ".join([context] * repeat)[:19_000]})
        elif task == "classification" and rnd.random() < 0.3:
            out.append({"text": texts.varied(rnd), "text_pair": rnd.choice(texts.sentences)})
        else:
            out.append(texts.varied(rnd))
    return out


def _client(base_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=300, headers={"Authorization": f"Bearer {key}"})


def _in_threads(targets: list[Any]) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def print_phase(name: str, tally: Tally, seconds: float) -> None:
    s = tally.summary()
    print(f"{name}: {s['requests']} requests in {seconds:.0f} s, statuses {s['statuses']}, "
          f"5xx {s['5xx']}, dropped connections {s['dropped_connections']}, "
          f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms")  # fmt: skip
    for what, payload in list(tally.failures.items())[:20]:
        print(f"  FAILURE {what}\n    body: {payload}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="keep (and reuse) the service's data here")
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4, help="fuzzing connections")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load-clients", type=int, default=8)
    parser.add_argument("--rows", type=int, default=300, help="training rows per task")
    parser.add_argument("--steps", type=int, default=20, help="training steps per model")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--quick", action="store_true", help="smoke test: 200 cases, 20 s load")
    args = parser.parse_args()
    if args.quick:
        args.cases, args.minutes, args.rows, args.steps = 200, 1 / 3, 64, 4

    texts = Texts.load()
    with ExitStack() as stack:
        data_dir = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log = data_dir / "predict_hostile.log"
        client, port, _pid, key = stack.enter_context(running_service(data_dir, log))
        base_url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        models = train_models(client, data_dir, rows=args.rows, steps=args.steps)
        print(
            f"models ready in {time.monotonic() - started:.0f} s: {json.dumps(models)}", flush=True
        )

        started = time.monotonic()
        fuzzed = fuzz(base_url, key, fuzz_strategy(models, texts),
                      cases=args.cases, clients=args.clients, seed=args.seed)  # fmt: skip
        print_phase("fuzz", fuzzed, time.monotonic() - started)
        started = time.monotonic()
        loaded = load(base_url, key, models, texts, clients=args.load_clients,
                      seconds=args.minutes * 60, seed=args.seed)  # fmt: skip
        print_phase("load", loaded, time.monotonic() - started)

    failed = any(t.server_errors or t.dropped or t.malformed for t in (fuzzed, loaded))
    print(json.dumps({
        "fuzz": fuzzed.summary(), "load": loaded.summary(),
        "load_clients": args.load_clients, "load_minutes": args.minutes,
        "models": {task: sorted(kinds) for task, kinds in models.items()}, "ok": not failed,
    }))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
