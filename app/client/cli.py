"""The client commands of `tuneserve`: datasets, jobs, models and predict against a running service.

Every command takes --api (or TUNESERVE_API_URL) and --key (or TUNESERVE_API_KEY), prints a table
or a short line, and prints the service's JSON with --json.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app.cli_common import fail
from app.client.api import DEFAULT_API, ApiError, Client
from app.client.follow import EXIT_STATUS, Follower, summary

ApiOpt = Annotated[
    str, typer.Option("--api", envvar="TUNESERVE_API_URL", help="The service's base URL.")
]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="TUNESERVE_API_KEY", help="API key.", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the service's JSON answer.")]

datasets_cli = typer.Typer(help="Upload and list datasets (client).", no_args_is_help=True)
jobs_cli = typer.Typer(help="Submit, list, follow and cancel jobs (client).", no_args_is_help=True)
models_cli = typer.Typer(
    help="List, show and download registered models (client).", no_args_is_help=True
)


@contextmanager
def connect(api: str, key: str | None) -> Iterator[Client]:
    """A client for the command; an ApiError ends the command with the service's message."""
    if not key:
        raise fail("no API key: pass --key or set TUNESERVE_API_KEY")
    client = Client(api, key)
    try:
        yield client
    except ApiError as exc:
        raise fail(exc.message) from None
    finally:
        client.close()


def out() -> Console:
    # Wide enough that ids are never cut when the output goes to a file or a pipe.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def table(columns: list[str], rows: list[list[Any]]) -> Table:
    result = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        result.add_row(*("" if v is None else str(v) for v in row))
    return result


def parse_assignments(items: list[str] | None, *, option: str) -> dict[str, Any]:
    """`key=value` pairs; a value is read as JSON when it parses (2, 1e-3, true), else as text."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"{option} takes key=value, got {item!r}")
        try:
            result[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            result[key.strip()] = raw
    return result


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def primary_metric(model: dict[str, Any]) -> str:
    metrics = model.get("metrics") or {}
    for name in ("accuracy", "f1", "exact_match"):
        if isinstance(metrics.get(name), int | float):
            return f"{name} {metrics[name]:.4f}"
    return ""


# --- datasets ----------------------------------------------------------------------------------


@datasets_cli.command("upload")
def datasets_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    task: Annotated[str, typer.Option(help="classification, ner or qa.")],
    name: Annotated[str | None, typer.Option(help="A name to show (default: the file's).")] = None,
    format: Annotated[str | None, typer.Option(help="csv, tsv, jsonl, conll, squad...")] = None,
    api: ApiOpt = DEFAULT_API,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a dataset file; prints its id."""
    with connect(api, key) as client:
        ds = client.upload_dataset(file, task=task, name=name, format=format)
    if as_json:
        return print_json(ds)
    labels = f", {len(ds['label_names'])} labels" if ds.get("label_names") else ""
    typer.echo(f"{ds['id']}  {ds['task']}  {ds['num_rows']} rows{labels}  {ds['name']}")


@datasets_cli.command("list")
def datasets_list(api: ApiOpt = DEFAULT_API, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Every dataset, newest first."""
    with connect(api, key) as client:
        rows = client.page("/v1/datasets", limit=100)
    if as_json:
        return print_json(rows)
    out().print(
        table(
            ["ID", "TASK", "ROWS", "FORMAT", "NAME", "CREATED"],
            [
                [d["id"], d["task"], d["num_rows"], d["format"], d["name"], d["created_at"][:19]]
                for d in rows
            ],
        )
    )


# --- jobs --------------------------------------------------------------------------------------


def follow_job(client: Client, job_id: str, *, as_json: bool) -> int:
    """Follow a job to its end; the exit status for how it ended."""
    status = Follower(client, job_id, console=out(), as_json=as_json).run()
    if not as_json and status != "deleted":
        typer.echo(summary(client.get(f"/v1/jobs/{job_id}")))
    return EXIT_STATUS.get(status, 1)


@jobs_cli.command("submit")
def jobs_submit(
    spec: Annotated[
        Path | None,
        typer.Option(help="A job spec as JSON ('-' reads stdin); the options below override it."),
    ] = None,
    task: Annotated[str | None, typer.Option(help="classification, ner or qa.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Base model id, or model:<id>.")] = None,
    train_dataset: Annotated[str | None, typer.Option(help="Training dataset id.")] = None,
    validation_dataset: Annotated[str | None, typer.Option(help="Validation dataset id.")] = None,
    method: Annotated[
        str | None, typer.Option(help="full, lora, ia3, adalora, prefix_tuning or head_only.")
    ] = None,
    hp: Annotated[
        list[str] | None, typer.Option("--hp", help="A hyperparameter, e.g. --hp epochs=2.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--method-option", help="A method option, e.g. --method-option r=16."),
    ] = None,
    follow: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
    api: ApiOpt = DEFAULT_API,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a fine-tuning job; prints its id (and follows it with --follow)."""
    body: dict[str, Any] = {}
    if spec is not None:
        text = sys.stdin.read() if str(spec) == "-" else spec.read_text(encoding="utf-8")
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise fail(f"--spec is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise fail("--spec must hold a JSON object")
    for field, value in (
        ("task", task),
        ("base_model", base_model),
        ("train_dataset", train_dataset),
        ("validation_dataset", validation_dataset),
    ):
        if value is not None:
            body[field] = value
    if method is not None or option:
        body["method"] = {
            **mapping(body.get("method")),
            **({"type": method} if method else {}),
            **parse_assignments(option, option="--method-option"),
        }
    if hp:
        body["hyperparameters"] = {
            **mapping(body.get("hyperparameters")),
            **parse_assignments(hp, option="--hp"),
        }
    with connect(api, key) as client:
        job = client.submit_job(body)
        if as_json and not follow:
            return print_json(job)
        if not as_json:
            typer.echo(f"{job['id']}  {job['status']}  {job['task']}  {job['method']['type']}")
        if follow:
            raise typer.Exit(follow_job(client, job["id"], as_json=as_json))


@jobs_cli.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="Only jobs with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many, newest first.")] = 20,
    api: ApiOpt = DEFAULT_API,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs, newest first."""
    with connect(api, key) as client:
        rows = client.get(f"/v1/jobs?limit={limit}" + (f"&status={status}" if status else ""))
    jobs = rows["data"]
    if as_json:
        return print_json(jobs)
    out().print(
        table(
            ["ID", "STATUS", "TASK", "METHOD", "BASE", "PROGRESS", "MODEL", "CREATED"],
            [
                [
                    j["id"],
                    j["status"],
                    j["task"],
                    j["method"]["type"],
                    j["base_model"],
                    f"{j['progress']['percent']:.1f}%",
                    j.get("model_id"),
                    j["created_at"][:19],
                ]
                for j in jobs
            ],
        )
    )


@jobs_cli.command("show")
def jobs_show(
    job_id: str, api: ApiOpt = DEFAULT_API, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """One job: status, progress, metrics, model or error."""
    with connect(api, key) as client:
        job = client.get(f"/v1/jobs/{job_id}")
    if as_json:
        return print_json(job)
    typer.echo(summary(job))


@jobs_cli.command("follow")
def jobs_follow(
    job_id: str, api: ApiOpt = DEFAULT_API, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Follow a job's events until it ends: a progress bar with loss and ETA. Exit status 0 when
    it succeeds, 1 when it fails, 2 when it is cancelled."""
    with connect(api, key) as client:
        code = follow_job(client, job_id, as_json=as_json)
    raise typer.Exit(code)


@jobs_cli.command("cancel")
def jobs_cancel(
    job_id: str, api: ApiOpt = DEFAULT_API, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Cancel a job (a running one stops at its next step)."""
    with connect(api, key) as client:
        job = client.request("POST", f"/v1/jobs/{job_id}/cancel")
    if as_json:
        return print_json(job)
    typer.echo(f"{job['id']}  {job['status']}")


# --- models ------------------------------------------------------------------------------------


@models_cli.command("list")
def models_list(api: ApiOpt = DEFAULT_API, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Registered models, newest first."""
    with connect(api, key) as client:
        rows = client.page("/v1/models", limit=100)
    if as_json:
        return print_json(rows)
    out().print(
        table(
            ["ID", "TASK", "METHOD", "BASE", "METRIC", "QUALITY", "ALIASES", "CREATED"],
            [
                [
                    m["id"],
                    m["task"],
                    m["method"],
                    m["base_model"],
                    primary_metric(m),
                    m.get("quality"),
                    ",".join(m.get("aliases") or []),
                    m["created_at"][:19],
                ]
                for m in rows
            ],
        )
    )


@models_cli.command("show")
def models_show(
    model: str, api: ApiOpt = DEFAULT_API, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """One model (by id or alias): its metrics beside the baseline's."""
    with connect(api, key) as client:
        row = client.resolve_model(model)
    if as_json:
        return print_json(row)
    baseline = row.get("baseline_metrics") or {}
    rows = [
        [k, f"{v:.4f}", f"{baseline[k]:.4f}" if isinstance(baseline.get(k), float) else ""]
        for k, v in (row.get("metrics") or {}).items()
        if isinstance(v, float)
    ]
    typer.echo(f"{row['id']}  {row['task']}  {row['method']}  on {row['base_model']}")
    out().print(table(["METRIC", "MODEL", "BASELINE"], rows))


@models_cli.command("download")
def models_download(
    model: Annotated[str, typer.Argument(help="Model id or alias.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Where to write it (default: ./<model id>.tar.gz).",
            dir_okay=False,
        ),
    ] = None,
    api: ApiOpt = DEFAULT_API,
    key: KeyOpt = None,
) -> None:
    """A model's files as a tar.gz that transformers, peft or ONNX Runtime load alone."""
    with connect(api, key) as client:
        model_id = client.resolve_model(model)["id"]
        target = output or Path(f"{Path(model_id).name}.tar.gz")  # the server's id, as a name
        size = client.download(f"/v1/models/{model_id}/download", target)
    typer.echo(f"{target}  {size} bytes")


# --- predict -----------------------------------------------------------------------------------


def predict(
    model: Annotated[str, typer.Argument(help="Model id or alias.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts (classification, NER).")] = None,
    question: Annotated[str | None, typer.Option(help="QA: the question.")] = None,
    context: Annotated[str | None, typer.Option(help="QA: the context.")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="Answers per input.")] = None,
    api: ApiOpt = DEFAULT_API,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask a model: labels with scores, entities, or an answer span."""
    with connect(api, key) as client:
        row = client.resolve_model(model)
        task = row["task"]
        if question is not None or context is not None:
            if question is None or context is None:
                raise fail("a QA input needs both --question and --context")
            inputs: list[Any] = [{"question": question, "context": context}]
        else:
            inputs = list(texts or [])
        if not inputs:
            raise fail("nothing to predict: give texts, or --question and --context")
        body: dict[str, Any] = {"model": row["id"], "inputs": inputs}
        if top_k is not None:
            body["top_k"] = top_k
        answer = client.predict(task, body)
    if as_json:
        return print_json(answer)
    for given, prediction in zip(inputs, answer["predictions"], strict=True):
        typer.echo(given if isinstance(given, str) else given["question"])
        items = prediction if isinstance(prediction, list) else [prediction]
        if not items:
            typer.echo("  (none)")
        for item in items:
            typer.echo("  " + prediction_line(item))


def prediction_line(item: Any) -> str:
    """A label with its score, an entity with its span, or an answer with its span."""
    if not isinstance(item, dict):
        return json.dumps(item, ensure_ascii=False)
    score = f"{item['score']:.4f}" if isinstance(item.get("score"), int | float) else ""
    if "answer" in item:
        return f"{item['answer']!r}  [{item.get('start')}:{item.get('end')}]  {score}"
    if "text" in item and "start" in item:
        return f"{item['label']}  {item['text']!r}  [{item['start']}:{item['end']}]  {score}"
    if "label" in item:
        return f"{item['label']}  {score}"
    return json.dumps(item, ensure_ascii=False)
