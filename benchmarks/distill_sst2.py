"""Distillation through the service: a teacher and its 3-layer student, their accuracy and speed.

Everything goes through the HTTP API of one `tuneserve up` (temporary data dir unless --data-dir),
started as benchmarks/serve_throughput.py starts it (inference threads as `tuneserve up` sets them,
the per-key rate limit off):

1. SST-2: the teacher is a full fine-tune of all-MiniLM-L6-v2 on the first N rows of train.tsv
   (4,000), validated on dev.tsv (872 sentences); the student is a distill job of that teacher,
   `{"type": "distill", "student": {"layers": 3}}` (3 of its 6 layers, one per block: 1, 3, 5),
   on the same rows. Both dev accuracies are the jobs' own evaluations on dev.tsv; every dev
   sentence is then sent once to each model through /v1/predict/classification and the served
   accuracy is checked against them.
2. Speed: both models served by the same service, a closed loop of 32 clients (the load client of
   serve_throughput.py: raw HTTP/1.1, one keep-alive connection per client, one dev sentence per
   request), phases alternating between the models; requests/s of each and their ratio.
3. CoNLL-2003: the same on the first M sentences of eng.train (3,000), validated on eng.testa:
   the teacher's and the student's entity F1 (--no-conll leaves it out). The student also gets
   a transfer set (`method.transfer_dataset`): the rest of eng.train, uploaded with every tag
   replaced by O (unlabelled text: the teacher labels it); --conll-transfer-sentences 0 leaves
   it out.

Targets (issue 18): the student within 1.5 points of the teacher's SST-2 dev accuracy, at least
1.7x its requests/s at concurrency 32, and within 2 points of its CoNLL F1.

    python benchmarks/distill_sst2.py                  # full run: hours on 2 shared CPU cores
    python benchmarks/distill_sst2.py --quick          # smoke test: tiny slices, short phases

Prints a summary and ends with one line of JSON. Exits non-zero if a job or request fails.
Nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.ner_conll import head_sentences  # noqa: E402
from benchmarks.serve_throughput import (  # noqa: E402
    LOOP_NAME,
    Phase,
    Server,
    child_pid,
    each_once,
    measure,
    pooled,
    process_env,
    run_async,
    running_service,
    scrape,
    tsv_rows,
    versions,
)
from benchmarks.train_throughput import (  # noqa: E402
    BASE,
    MODEL_PACKAGE,
    RunFailed,
    head_lines,
    log_tail,
    upload,
    wait_for_job,
)

DEFAULT_DATA = REPO.parent / "shared" / "data"
CONCURRENCY = 32
CHECK_CONCURRENCY = 8
TARGETS = {"sst2_accuracy_drop_points": 1.5, "speedup_c32": 1.7, "conll_f1_drop_points": 2.0}
# --quick: SST-2 train rows, dev rows, CoNLL train and validation sentences, epochs; warm-up and
# window seconds, rounds.
QUICK_DATA = (64, 64, 40, 40, 1.0)
QUICK_TRANSFER = 40
QUICK_PHASES = (0.5, 1.5, 1)


def run_job(client: httpx.Client, spec: dict[str, Any], what: str, data_dir: Path) -> Any:
    """Submit a job and wait for it; (job, registered model, wall seconds from submission)."""
    started = time.perf_counter()
    resp = client.post("/v1/jobs", json=spec)
    if resp.status_code != 201:
        raise RunFailed(f"submitting {what}: {resp.status_code} {resp.text}")
    print(f"{what}: job {resp.json()['id']}", flush=True)
    job = wait_for_job(client, resp.json()["id"])
    seconds = round(time.perf_counter() - started, 1)
    if job["status"] != "succeeded":
        worker = log_tail(data_dir / "logs" / "worker.log")
        raise RunFailed(f"{what} ended {job['status']}: {job.get('error')}\n{worker}")
    model = client.get(f"/v1/models/{job['model_id']}").json()
    print(f"{what}: {job['metrics']} in {seconds} s", flush=True)
    return job, model, seconds


def teacher_and_student(
    client: httpx.Client,
    data_dir: Path,
    *,
    task: str,
    train: str,
    validation: str,
    hyperparameters: dict[str, Any],
    method: dict[str, Any],
    student_hyperparameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A full fine-tune of BASE and its distilled student, on the same rows (the student's
    hyperparameters the teacher's, less what `student_hyperparameters` sets)."""
    common = {"task": task, "train_dataset": train, "validation_dataset": validation}
    t_job, teacher, t_s = run_job(
        client,
        {**common, "base_model": BASE, "hyperparameters": hyperparameters},
        f"{task} teacher",
        data_dir,
    )
    s_job, student, s_s = run_job(
        client,
        {
            **common,
            "base_model": f"model:{teacher['id']}",
            "method": method,
            "hyperparameters": {**hyperparameters, **(student_hyperparameters or {})},
        },
        f"{task} student",
        data_dir,
    )
    return {
        "teacher": teacher,
        "student": student,
        "teacher_train_s": t_s,
        "student_train_s": s_s,
        "hyperparameters": s_job["hyperparameters"],
        "teacher_hyperparameters": t_job["hyperparameters"],
    }


def served_accuracy(bodies: list[bytes], gold: list[str]) -> float:
    right = sum(
        json.loads(body)["predictions"][0][0]["label"] == label
        for body, label in zip(bodies, gold, strict=True)
    )
    return round(right / len(gold), 4)


def conll_upload(client: httpx.Client, name: str, content: bytes) -> str:
    resp = client.post("/v1/datasets", data={"task": "ner"}, files={"file": (name, content)})
    if resp.status_code != 201:
        raise RunFailed(f"uploading {name}: {resp.status_code} {resp.text}")
    return str(resp.json()["id"])


def conll(
    client: httpx.Client, data_dir: Path, folder: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The CoNLL-2003 teacher and student; their eng.testa F1."""
    train_bytes = (folder / "eng.train").read_bytes()
    testa = (folder / "eng.testa").read_bytes()
    if args.conll_validation_sentences is not None:
        testa = head_sentences(testa, args.conll_validation_sentences)
    train = conll_upload(
        client, "eng.train.conll", head_sentences(train_bytes, args.conll_sentences)
    )
    validation = conll_upload(client, "eng.testa.conll", testa)
    method = method_of(args)
    transfer_sentences = 0
    if args.conll_transfer_sentences != 0:
        unlabelled = unlabelled_sentences(
            train_bytes, skip=args.conll_sentences, count=args.conll_transfer_sentences
        )
        transfer = conll_upload(client, "eng.train.rest.conll", unlabelled)
        transfer_sentences = client.get(f"/v1/datasets/{transfer}").json()["num_rows"]
        method["transfer_dataset"] = transfer
    pair = teacher_and_student(
        client,
        data_dir,
        task="ner",
        train=train,
        validation=validation,
        hyperparameters={"epochs": args.conll_epochs},
        method=method,
        student_hyperparameters=student_hyperparameters(args, epochs=args.conll_student_epochs),
    )
    teacher, student = pair["teacher"], pair["student"]
    return {
        "teacher_f1": round(teacher["metrics"]["f1"], 4),
        "student_f1": round(student["metrics"]["f1"], 4),
        "f1_drop_points": round((teacher["metrics"]["f1"] - student["metrics"]["f1"]) * 100, 2),
        "teacher_f1_in_student_job": round(student["parent_metrics"]["f1"], 4),
        "train_sentences": client.get(f"/v1/datasets/{train}").json()["num_rows"],
        "transfer_sentences": transfer_sentences,
        "validation_sentences": client.get(f"/v1/datasets/{validation}").json()["num_rows"],
        "teacher_train_s": pair["teacher_train_s"],
        "student_train_s": pair["student_train_s"],
        "hyperparameters": pair["hyperparameters"],
        "teacher_model": teacher["id"],
        "student_model": student["id"],
    }


def unlabelled_sentences(content: bytes, *, skip: int, count: int) -> bytes:
    """The sentences of a CoNLL file after the first `skip` (`count` of them; -1: all), each
    word tagged O: text with no labels, as a transfer set is uploaded."""
    rest = content[len(head_sentences(content, skip)) :] if skip else content
    sentences = []
    for block in re.split(rb"\n[ \t]*\n", rest):
        lines = (line.split() for line in block.splitlines())
        words = [cols[0] for cols in lines if cols and cols[0] != b"-DOCSTART-"]
        if words:
            sentences.append(b"".join(word + b" O\n" for word in words))
    if count >= 0:
        sentences = sentences[:count]
    return b"\n".join(sentences) + (b"\n" if sentences else b"")


def method_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "type": "distill",
        "student": {"layers": args.layers},
        "temperature": args.temperature,
        "alpha": args.alpha,
        "hidden_weight": args.hidden_weight,
    }


def student_layers(text: str) -> int | list[int]:
    """--layers: a count, or comma-separated layer indices (method.student.layers)."""
    return [int(i) for i in text.split(",")] if "," in text else int(text)


def student_hyperparameters(args: argparse.Namespace, *, epochs: float | None) -> dict[str, Any]:
    """What the student sets apart from its teacher's hyperparameters."""
    given = {"epochs": epochs, "learning_rate": args.student_learning_rate}
    return {k: v for k, v in given.items() if v is not None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    ap.add_argument("--train-rows", type=int, default=4000, help="SST-2 train rows")
    ap.add_argument(
        "--epochs",
        type=float,
        default=3.0,
        help="SST-2 epochs (the teacher's, and the student's unless --student-epochs)",
    )
    ap.add_argument(
        "--layers",
        type=student_layers,
        default=3,
        help="layers the student keeps: a count (3), or the teacher's layers named (0,3,5)",
    )
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--hidden-weight", type=float, default=0.0, help="method.hidden_weight")
    ap.add_argument(
        "--student-epochs", type=float, help="SST-2 epochs of the student (default: --epochs)"
    )
    ap.add_argument(
        "--conll-student-epochs",
        type=float,
        help="CoNLL epochs of the student (default: --conll-epochs)",
    )
    ap.add_argument(
        "--student-learning-rate", type=float, help="the student's (default: the teacher's)"
    )
    ap.add_argument("--conll-sentences", type=int, default=3000, help="CoNLL train sentences")
    ap.add_argument(
        "--conll-epochs", type=float, default=2.0, help="CoNLL epochs (as --epochs, for CoNLL)"
    )
    ap.add_argument(
        "--conll-transfer-sentences",
        type=int,
        default=-1,
        help="eng.train sentences after --conll-sentences, uploaded unlabelled as the CoNLL "
        "student's transfer set (default -1: all of them; 0: no transfer set)",
    )
    ap.add_argument("--no-conll", action="store_true", help="leave CoNLL-2003 out")
    ap.add_argument(
        "--data-dir", type=Path, help="the service's data dir, kept (default: a temporary one)"
    )
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before each window")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured seconds per phase")
    ap.add_argument("--rounds", type=int, default=3, help="phases per model")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 64 SST-2 rows, 64 dev sentences, 40 CoNLL sentences and 40 of "
        "eng.testa, 1 epoch, 1.5 s phases, 1 round",
    )
    args = ap.parse_args()
    dev_rows: int | None = None
    args.conll_validation_sentences = None
    warmup, seconds, rounds = args.warmup, args.seconds, args.rounds
    if args.quick:
        args.train_rows, dev_rows, args.conll_sentences = QUICK_DATA[:3]
        args.conll_validation_sentences, args.epochs = QUICK_DATA[3], QUICK_DATA[4]
        args.conll_epochs = QUICK_DATA[4]
        if args.conll_transfer_sentences != 0:
            args.conll_transfer_sentences = QUICK_TRANSFER
        warmup, seconds, rounds = QUICK_PHASES
    sst2, conll_dir = args.data / "sst2", args.data / "conll2003"
    needed = [sst2 / "train.tsv", sst2 / "dev.tsv"]
    needed += [] if args.no_conll else [conll_dir / "eng.train", conll_dir / "eng.testa"]
    for path in needed:
        if not path.exists():
            print(f"data not found: {path} (see --data)", file=sys.stderr)
            return 2
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        print(f"the {MODEL_PACKAGE} package (the base's weights) is missing", file=sys.stderr)
        return 2

    started = time.perf_counter()
    load = {"start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="distill-") as name, ExitStack() as stack:
        tmp = Path(name)
        data_dir = (args.data_dir or tmp / "service-data").resolve()
        train, dev = tmp / f"sst2-train-{args.train_rows}.tsv", tmp / "sst2-dev.tsv"
        head_lines(sst2 / "train.tsv", train, args.train_rows)
        head_lines(sst2 / "dev.tsv", dev, dev_rows)
        dev_texts, gold = (list(x) for x in zip(*tsv_rows(dev), strict=True))
        try:
            client, port, up_pid, key = stack.enter_context(
                running_service(data_dir, tmp / "tuneserve-up.log")
            )
            pair = teacher_and_student(
                client,
                data_dir,
                task="classification",
                train=upload(client, train)["id"],
                validation=upload(client, dev)["id"],
                hyperparameters={"epochs": args.epochs},
                method=method_of(args),
                student_hyperparameters=student_hyperparameters(args, epochs=args.student_epochs),
            )
            load["after_training"] = round(os.getloadavg()[0], 2)
            train_rows = client.get(f"/v1/datasets/{pair['student']['train_dataset']}").json()[
                "num_rows"
            ]
            api_pid = child_pid(up_pid, "api")
            if api_pid is None:
                raise RunFailed("the service's API process was not found")
            env = process_env(api_pid, "OMP_NUM_THREADS", "TUNESERVE_INFERENCE_THREADS")
            servers = [
                Server(
                    role,
                    port=port,
                    pid=api_pid,
                    path="/v1/predict/classification",
                    body=lambda t, i=pair[role]["id"]: json.dumps(
                        {"model": i, "inputs": [t], "top_k": 1}
                    ).encode(),
                    headers=f"Authorization: Bearer {key}\r\n",
                    env=env,
                    scrape=lambda: scrape(client),
                )
                for role in ("teacher", "student")
            ]
            print(f"checking predictions on {len(dev_texts)} dev sentences", flush=True)
            served = {
                s.name: served_accuracy(
                    run_async(
                        each_once(
                            port,
                            [s.request(t) for t in dev_texts],
                            concurrency=CHECK_CONCURRENCY,
                        )
                    ),
                    gold,
                )
                for s in servers
            }
            requests = {s.name: [s.request(t) for t in dev_texts] for s in servers}
            phases: dict[str, list[Phase]] = {s.name: [] for s in servers}
            for r in range(rounds):
                for s in servers if r % 2 == 0 else servers[::-1]:
                    phase = measure(
                        s,
                        requests[s.name],
                        concurrency=CONCURRENCY,
                        warmup=warmup,
                        seconds=seconds,
                    )
                    phases[s.name].append(phase)
                    print(
                        f"  c={CONCURRENCY} round {r + 1} {s.name:8} {phase.rps:7.1f} req/s  "
                        f"load {phase.load_1m:.2f}",
                        flush=True,
                    )
            ner = None if args.no_conll else conll(client, data_dir, conll_dir, args)
        except RunFailed as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
        load["end"] = round(os.getloadavg()[0], 2)

    teacher, student = pair["teacher"], pair["student"]
    speed = {name: pooled(ps) for name, ps in phases.items()}
    t_acc, s_acc = teacher["metrics"]["accuracy"], student["metrics"]["accuracy"]
    figures: dict[str, Any] = {
        "benchmark": "distill_sst2",
        "quick": args.quick,
        "teacher_dev_accuracy": round(t_acc, 4),
        "student_dev_accuracy": round(s_acc, 4),
        "sst2_accuracy_drop_points": round((t_acc - s_acc) * 100, 2),
        "teacher_rps_c32": speed["teacher"]["rps"],
        "student_rps_c32": speed["student"]["rps"],
        "speedup_c32": round(speed["student"]["rps"] / speed["teacher"]["rps"], 3),
        "conll_teacher_f1": ner["teacher_f1"] if ner else None,
        "conll_student_f1": ner["student_f1"] if ner else None,
        "conll_f1_drop_points": ner["f1_drop_points"] if ner else None,
    }
    met = {
        name: (figures[name] >= target if name == "speedup_c32" else figures[name] <= target)
        for name, target in TARGETS.items()
        if figures[name] is not None
    }
    figures |= {
        "targets": TARGETS,
        "targets_met": met,
        "meets_targets": all(met.values()),
        "served_dev_accuracy": served,
        "teacher_accuracy_in_student_job": round(student["parent_metrics"]["accuracy"], 4),
        "sst2": {
            "train_rows": train_rows,
            "dev_sentences": len(dev_texts),
            "method": method_of(args),
            "hyperparameters": pair["hyperparameters"],
            "teacher_train_s": pair["teacher_train_s"],
            "student_train_s": pair["student_train_s"],
            "teacher_parameters": teacher["parameters"],
            "student_parameters": student["parameters"],
            "teacher_model": teacher["id"],
            "student_model": student["id"],
        },
        "serving": speed,
        "conll": ner,
        "concurrency": CONCURRENCY,
        "warmup_s": warmup,
        "seconds_per_phase": seconds,
        "rounds": rounds,
        "client": f"raw HTTP/1.1 keep-alive on {LOOP_NAME}, in the benchmark process",
        "thread_env": env,
        "load_avg_1m": load,
        "cpus": os.cpu_count(),
        "wall_s": round(time.perf_counter() - started, 1),
        "versions": versions(),
    }
    print_summary(figures)
    print(json.dumps(figures))
    return 0


def print_summary(f: dict[str, Any]) -> None:
    sst2, served = f["sst2"], f["served_dev_accuracy"]
    print(
        f"\nSST-2 dev accuracy ({f['sst2']['dev_sentences']} sentences): teacher "
        f"{f['teacher_dev_accuracy']} (served {served['teacher']}), student "
        f"{f['student_dev_accuracy']} (served {served['student']}); "
        f"{f['sst2_accuracy_drop_points']} points lower"
    )
    print(
        f"requests/s at concurrency {f['concurrency']}: teacher {f['teacher_rps_c32']}, student "
        f"{f['student_rps_c32']}: {f['speedup_c32']}x; trained in {sst2['teacher_train_s']} s "
        f"and {sst2['student_train_s']} s"
    )
    if f["conll"]:
        c = f["conll"]
        print(
            f"CoNLL-2003 eng.testa F1 ({c['train_sentences']} train sentences, "
            f"{c['transfer_sentences']} unlabelled for the student): teacher "
            f"{c['teacher_f1']}, student {c['student_f1']}; {c['f1_drop_points']} points lower"
        )
    print("targets met: " + ", ".join(f"{k} {v}" for k, v in f["targets_met"].items()))


if __name__ == "__main__":
    sys.exit(main())
