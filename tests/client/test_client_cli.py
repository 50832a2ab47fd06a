"""The client commands (`tuneserve datasets|jobs|models|predict`) against the real app: uploads,
submits, lists, follows and cancels, with the service's own errors on stderr."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from app.cli import cli
from app.client.api import StreamEvent
from app.client.follow import Follower
from tests.liveserver import uvicorn_thread

BASE = "sentence-transformers/all-MiniLM-L6-v2"
CSV = "text,label\n" + "".join(f"good text {i},pos\nbad text {i},neg\n" for i in range(6))


@pytest.fixture
def live_api(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The test app served by uvicorn on a free port, in a thread."""
    with uvicorn_thread(app) as url:
        yield url


@pytest.fixture
def run(live_api, admin_key, monkeypatch):  # type: ignore[no-untyped-def]
    """Invoke `tuneserve ...` against the live test app, with the admin key in the environment."""
    monkeypatch.setenv("TUNESERVE_API_KEY", admin_key)
    monkeypatch.setenv("TUNESERVE_API_URL", live_api)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


def upload(run, csv_file) -> str:  # type: ignore[no-untyped-def]
    result = run("datasets", "upload", str(csv_file), "--task", "classification", "--json")
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["id"])


def test_upload_submit_list_show_cancel_and_follow(run, csv_file, queue):  # type: ignore[no-untyped-def]
    result = run("datasets", "upload", str(csv_file), "--task", "classification", "--name", "mine")
    assert result.exit_code == 0, result.output
    dataset_id, task, rows = result.stdout.split()[:3]
    assert task == "classification" and rows == "12"
    listed = run("datasets", "list")
    assert dataset_id in listed.stdout and "mine" in listed.stdout

    result = run(
        "jobs", "submit", "--task", "classification", "--base-model", BASE,
        "--train-dataset", dataset_id, "--method", "lora", "--method-option", "r=4",
        "--hp", "epochs=2", "--hp", "learning_rate=1e-3", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["method"]["type"] == "lora" and job["method"]["r"] == 4
    assert job["hyperparameters"]["epochs"] == 2 and job["hyperparameters"]["learning_rate"] == 1e-3
    assert queue.enqueued == [job["id"]]

    table = run("jobs", "list").stdout
    assert job["id"] in table and "queued" in table and "lora" in table
    assert run("jobs", "list", "--status", "running").stdout.count(job["id"]) == 0
    assert "queued" in run("jobs", "show", job["id"]).stdout

    cancelled = run("jobs", "cancel", job["id"])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    # Following an ended job replays its events and exits with its status: 2 for cancelled.
    followed = run("jobs", "follow", job["id"])
    assert followed.exit_code == 2, followed.output
    assert "[queued]" in followed.stdout and "[cancelled]" in followed.stdout
    assert f"job {job['id']} cancelled" in followed.stdout
    as_json = run("jobs", "follow", job["id"], "--json")
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [line["event"] for line in lines] == ["status", "status", "end"]
    assert lines[-1]["status"] == "cancelled" and as_json.exit_code == 2


def test_a_spec_file_and_options_merge(run, csv_file, tmp_path):  # type: ignore[no-untyped-def]
    dataset_id = upload(run, csv_file)
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "task": "classification",
                "base_model": BASE,
                "train_dataset": dataset_id,
                "hyperparameters": {"epochs": 3, "batch_size": 4},
            }
        )
    )
    result = run("jobs", "submit", "--spec", str(spec), "--hp", "epochs=1", "--json")
    assert result.exit_code == 0, result.output
    hp = json.loads(result.stdout)["hyperparameters"]
    assert (hp["epochs"], hp["batch_size"]) == (1, 4)
    piped = run("jobs", "submit", "--spec", "-", "--json", input=spec.read_text())
    assert piped.exit_code == 0 and json.loads(piped.stdout)["hyperparameters"]["epochs"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train-dataset", "ds_missing"], "ds_missing"),  # the service's own 422 message
        (["--hp", "epochs"], "--hp takes key=value"),
        (["--hp", "epochs=0"], "epochs"),
        (["--method", "magic"], "magic"),
    ],
)
def test_refusals_say_why_on_stderr(run, csv_file, args, message):  # type: ignore[no-untyped-def]
    dataset_id = upload(run, csv_file)
    base = ["jobs", "submit", "--task", "classification", "--base-model", BASE]
    result = run(*base, "--train-dataset", dataset_id, *args)
    assert result.exit_code == 1
    assert message in result.stderr and result.stderr.startswith("tuneserve: ")
    assert result.stdout == ""


def test_no_key_and_unknown_ids(run, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("TUNESERVE_API_KEY")
    result = run("jobs", "list")
    assert result.exit_code == 1 and "TUNESERVE_API_KEY" in result.stderr
    bad = run("jobs", "list", "--key", "not-a-key")
    assert bad.exit_code == 1 and "key" in bad.stderr.lower()
    monkeypatch.setenv("TUNESERVE_API_KEY", "x")
    assert run("models", "show", "nope").exit_code == 1


def test_an_unreachable_service_is_one_line() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["jobs", "list", "--api", "http://127.0.0.1:9", "--key", "k"])
    assert result.exit_code == 1
    assert "cannot reach the service at http://127.0.0.1:9" in result.stderr


class ScriptedClient:
    """Stands in for the HTTP client: hands out a fixed list of events."""

    def __init__(self, events: list[StreamEvent]) -> None:
        self._events = events

    def events(self, job_id: str) -> list[StreamEvent]:
        return self._events


def train_event(step: int, total: int, loss: float) -> StreamEvent:
    data = {
        "kind": "train", "step": step, "total": total, "percent": 100 * step / total,
        "loss": loss, "learning_rate": 1e-3, "samples_per_second": 40.0, "eta_s": 65.0,
    }  # fmt: skip
    return StreamEvent("metrics", step, {"message": f"step {step}", "data": data})


EVENTS = [
    StreamEvent("status", 1, {"message": "queued", "data": {"status": "queued"}}),
    StreamEvent("status", 2, {"message": "running", "data": {"status": "running"}}),
    *[train_event(s, 40, 1.0 / s) for s in range(1, 41)],
    StreamEvent("warning", 50, {"message": "<b>loss</b> [red]flat[/red]", "data": {}}),
    StreamEvent("end", None, {"status": "succeeded"}),
]


def test_a_terminal_shows_a_bar_with_loss_and_eta() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    follower = Follower(ScriptedClient(EVENTS), "job_1", console=console, as_json=False)  # type: ignore[arg-type]
    assert follower.run() == "succeeded"
    screen = buffer.getvalue()
    assert "100.0%" in screen and "40/40" in screen and "loss 0.0250" in screen
    assert "ETA 1m05s" in screen and "━" in screen
    # A warning's text is shown as written: rich markup in it is not interpreted.
    assert "warning: <b>loss</b> [red]flat[/red]" in screen


def test_a_log_gets_a_line_every_tenth() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    follower = Follower(ScriptedClient(EVENTS), "job_1", console=console, as_json=False)  # type: ignore[arg-type]
    assert follower.run() == "succeeded"
    steps = [line.split()[1] for line in buffer.getvalue().splitlines() if line.startswith("step")]
    assert steps == [f"{s}/40" for s in (1, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40)]
