"""`tuneserve jobs follow`: a job's event stream as a live progress bar (loss, ETA) on a terminal,
as lines in a log when the output is not one, or as JSON lines with --json."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from app.client.api import Client, StreamEvent
from app.core.humanize import duration

# Exit statuses of `jobs follow`, by how the job ended.
EXIT_STATUS = {"succeeded": 0, "failed": 1, "cancelled": 2, "pruned": 2, "deleted": 2}
# Without a terminal, one progress line at the first step and at each tenth of training.
LINE_EVERY_PERCENT = 10.0


def train_line(data: dict[str, Any]) -> str:
    """One training step's figures: step, percent, loss, learning rate, throughput, ETA."""
    loss = data.get("loss")
    lr = data.get("learning_rate")
    sps = data.get("samples_per_second")
    parts = [
        f"step {data.get('step')}/{data.get('total')}",
        f"{data.get('percent', 0):.1f}%",
        f"loss {loss:.4f}" if isinstance(loss, int | float) else "loss ?",
    ]
    if isinstance(lr, int | float):
        parts.append(f"lr {lr:.2e}")
    if isinstance(sps, int | float):
        parts.append(f"{sps:.1f} samples/s")
    parts.append(f"ETA {duration(data.get('eta_s'))}")
    return "  ".join(parts)


def event_line(event: StreamEvent) -> str | None:
    """A readable line for a status, log, warning or evaluation event (None: a training step)."""
    data = event.data.get("data") or {}
    message = str(event.data.get("message", ""))
    if event.type == "metrics" and data.get("kind") == "train":
        return None
    if event.type == "warning":
        return f"warning: {message}"
    if event.type == "status":
        return f"[{data.get('status', 'status')}] {message}"
    return message


class Follower:
    """Shows one job's events; `run` returns the job's final status."""

    def __init__(self, client: Client, job_id: str, *, console: Console, as_json: bool) -> None:
        self.client = client
        self.job_id = job_id
        self.console = console
        self.as_json = as_json
        self.last_tenth = -1

    def run(self) -> str:
        if self.as_json:
            return self._run_json()
        if self.console.is_terminal:
            return self._run_bar()
        return self._run_lines()

    def _run_json(self) -> str:
        status = "deleted"
        for event in self.client.events(self.job_id):
            print(json.dumps({"event": event.type, "id": event.id, **event.data}), flush=True)
            if event.type == "end":
                status = str(event.data.get("status"))
        return status

    def _run_lines(self) -> str:
        status = "deleted"
        for event in self.client.events(self.job_id):
            if event.type == "end":
                status = str(event.data.get("status"))
                break
            line = event_line(event)
            data = event.data.get("data") or {}
            if line is None:
                tenth = int(float(data.get("percent") or 0.0) // LINE_EVERY_PERCENT)
                if tenth <= self.last_tenth:
                    continue
                self.last_tenth = tenth
                line = train_line(data)
            self.console.print(escape(line), soft_wrap=True, highlight=False)
        return status

    def _run_bar(self) -> str:
        status = "deleted"
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[figures]}"),
            console=self.console,
            transient=False,
        )
        with progress:
            bar: TaskID = progress.add_task(self.job_id, total=100.0, figures="waiting to start")
            for event in self.client.events(self.job_id):
                if event.type == "end":
                    status = str(event.data.get("status"))
                    break
                data = event.data.get("data") or {}
                line = event_line(event)
                if line is not None:
                    progress.console.print(escape(line), highlight=False)
                    if event.type == "status":
                        progress.update(bar, description=f"{self.job_id} {data.get('status')}")
                    continue
                figures = train_line(data).split("  ", 2)[-1]  # loss, lr, rate, ETA
                step = f"{data.get('step')}/{data.get('total')}"
                progress.update(
                    bar, completed=float(data.get("percent") or 0.0), figures=f"{step}  {figures}"
                )
            if status == "succeeded":
                progress.update(bar, completed=100.0)
        return status


def summary(job: dict[str, Any]) -> str:
    """The end of a followed job in one line: status, metrics, model, or the error."""
    parts = [f"job {job['id']} {job['status']}"]
    metrics = job.get("metrics") or {}
    shown = [
        f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and k != "eval_loss"
    ]
    if shown:
        parts.append(", ".join(shown[:4]))
    if job.get("quality"):
        parts.append(f"quality {job['quality']}")
    if job.get("model_id"):
        parts.append(f"model {job['model_id']}")
    error = job.get("error")
    if error:
        parts.append(f"error {error.get('code')}: {error.get('message')}")
    return "; ".join(parts)
