"""Datasets: parse and validate an upload (in a parsing process), publish it, list, delete."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.idempotency import IdempotentRequest
from app.core.pagination import page_newest_first
from app.core.storage import remove_tree
from app.core.store import NotInStore, Store, get_store
from app.dataset import isolation, parsing
from app.dataset.schemas import DatasetCreate, DatasetFormat, DatasetRead
from app.dataset.upload import ReceivedUpload, staging_dir
from app.db.models import Dataset, DatasetStatus, Job, JobStatus, new_id
from app.db.session import get_by_id
from app.ml.tables import ParsedTable
from app.ml.tasks import REGISTRY, TaskSpec, get_task
from app.ml.tasks.base import DatasetSummary

if TYPE_CHECKING:
    import datasets

log = logging.getLogger("tuneserve.dataset")
DATA_FILE = "data.parquet"
SOURCE_FILE = "source"


def create_dataset(
    session: Session,
    *,
    settings: Settings,
    tenant: str,
    spec: DatasetCreate,
    upload: ReceivedUpload,
    idempotency: IdempotentRequest | None = None,
) -> Dataset:
    """Parse, map, validate and summarize an upload; publish its files, then commit the row.

    The parsing runs in a separate process (app/dataset/isolation.py) with its own memory and time
    limits; the files are published and the row committed here.
    With `idempotency`, a key seen before replays its first response (raises Replay) instead.
    """
    if idempotency is not None:
        idempotency.replay_if_seen(session)
    task = get_task(spec.task)
    check_mapping(task, spec.column_mapping)

    dataset_id = new_id("ds")
    storage_path = f"datasets/{dataset_id}"
    # An upload holds a client: during a store outage it answers 503 soon rather than wait.
    store = get_store(settings, patience_s=settings.upload_storage_retry_seconds)
    staging = Path(tempfile.mkdtemp(dir=staging_dir(settings), prefix=f"{dataset_id}-"))
    try:
        job = ParseJob(
            task=task.name,
            format=spec.format.value if spec.format is not None else None,
            source=str(upload.path),
            filename=upload.filename,
            column_mapping=spec.column_mapping,
            header=spec.header,
            strict=spec.strict,
            max_text_chars=settings.max_text_chars,
            limits=parsing.ParseLimits.from_settings(settings),
            target=str(staging / DATA_FILE),
        )
        outcome = ParseOutcome.from_dict(
            isolation.run(parse_upload, asdict(job), settings=settings)
        )
        # The original bytes, kept under a name we chose: same filesystem, so a rename.
        os.replace(upload.path, staging / SOURCE_FILE)
        store.publish(staging, storage_path)
    except BaseException:
        remove_tree(staging)
        _forget(store, storage_path)  # whatever part reached the store stays invisible; tidy it
        raise

    summary = outcome.summary
    row = Dataset(
        id=dataset_id,
        tenant_id=tenant,
        name=display_name(spec.name, upload.filename),
        task=task.name,
        format=outcome.format,
        status=DatasetStatus.READY,
        num_rows=summary.num_rows,
        columns=summary.columns,
        label_names=summary.label_names,
        label_counts=summary.label_counts,
        stats={**summary.stats, **outcome.notes, "column_mapping": outcome.applied},
        sha256=upload.sha256,
        size_bytes=upload.size_bytes,
        storage_path=storage_path,
    )
    try:
        session.add(row)
        if idempotency is not None:
            session.flush()
            idempotency.remember(session, status_code=201, body=DatasetRead.from_row(row))
        session.commit()
    except BaseException as exc:
        session.rollback()
        _forget(store, storage_path)
        if idempotency is not None and isinstance(exc, IntegrityError):
            # A concurrent request with this key committed first: answer what it answered.
            idempotency.replay_if_seen(session)
        raise
    return row


@dataclass(frozen=True)
class ParseJob:
    """One upload to parse, as the parsing process receives it: plain data, sent as JSON."""

    task: str
    format: str | None  # None: detected from the content and the file name
    source: str  # the uploaded file
    filename: str | None  # the client's name for it: a format hint, never opened
    column_mapping: dict[str, str]
    header: bool
    strict: bool
    max_text_chars: int
    limits: parsing.ParseLimits
    target: str  # where the normalized rows are written (data.parquet, in the staging directory)


@dataclass
class ParseOutcome:
    """What parsing learned: the format read, the summary, repair notes, the columns renamed."""

    format: str
    summary: DatasetSummary
    notes: dict[str, Any]
    applied: dict[str, str]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParseOutcome:
        return cls(
            format=data["format"],
            summary=DatasetSummary(**data["summary"]),
            notes=data["notes"],
            applied=data["applied"],
        )


def parse_upload(payload: dict[str, Any]) -> dict[str, Any]:
    """The parsing process's entry: a ParseJob as a dict in, a ParseOutcome as a dict out."""
    limits = parsing.ParseLimits(**payload["limits"])
    return asdict(parse_file(ParseJob(**{**payload, "limits": limits})))


def warm_up() -> None:
    """What a parsing process does once before its first job: imports, lazily built state."""
    import datasets as hf
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(hf.Dataset.from_dict({"text": ["x"]}).data.table, sink)
    pq.read_table(pa.BufferReader(sink.getvalue()))


def parse_file(job: ParseJob) -> ParseOutcome:
    """Read, map, validate and summarize one upload, and write its rows to `job.target`."""
    task = get_task(job.task)
    path = Path(job.source)
    fmt = (
        DatasetFormat(job.format)
        if job.format is not None
        else detect_format(task, path, filename=job.filename)
    )
    parsed = read_rows(task, fmt, path, limits=job.limits, header=job.header)
    if parsed.table.num_rows == 0:
        what = "a header line but no data rows" if parsed.had_header else "no rows"
        raise InvalidInput(f"the file has {what}", code="empty_file", field="file")
    with file_context(parsed, {}):
        parsed.table = task.adapt_table(parsed.table)
    chosen = resolve_columns(
        task,
        parsed.table.column_names,
        job.column_mapping,
        first_row=None if job.header else _first_row(parsed.table),
    )
    check_cell_lengths(parsed.table, chosen, limit=job.max_text_chars)
    with file_context(parsed, chosen):
        result = task.normalize(_select(parsed.table, chosen), strict=job.strict)
        check_not_flattened(task, parsed.table, chosen, result.rows)
    _write_parquet(result.rows, Path(job.target))
    return ParseOutcome(
        format=fmt.value,
        summary=task.summarize(result.rows),
        notes=result.notes,
        applied={source: name for name, source in chosen.items() if source != name},
    )


def check_mapping(task: TaskSpec, mapping: dict[str, str]) -> None:
    """Every target of a column_mapping is a column the task knows, named once."""
    known = task.required_columns + task.optional_columns
    seen: dict[str, str] = {}
    for source, target in mapping.items():
        if target not in known:
            raise InvalidInput(
                f"column_mapping maps '{source}' to '{target}', which is not a column of task "
                f"'{task.name}' (its columns: {', '.join(known)})",
                field="column_mapping",
            )
        if target in seen:
            raise InvalidInput(
                f"column_mapping maps both '{seen[target]}' and '{source}' to '{target}'",
                field="column_mapping",
            )
        seen[target] = source


def resolve_columns(
    task: TaskSpec,
    columns: list[str],
    mapping: dict[str, str],
    *,
    first_row: list[str] | None = None,
) -> dict[str, str]:
    """Canonical column -> file column: the client's mapping, the name itself, or one alias.

    `first_row` is given for a file without a header line, whose columns are positions.
    """
    unknown = [source for source in mapping if source not in columns]
    if unknown:
        what = (
            f"has columns {_names(columns)}"
            if first_row is None
            else f"has no header line and {len(columns)} columns, numbered 0 to {len(columns) - 1}"
        )
        raise InvalidInput(
            f"column_mapping names {_names(unknown)} but the file {what}",
            code="missing_column",
            field="column_mapping",
            columns=columns,
        )
    canonical = task.required_columns + task.optional_columns
    chosen = {target: source for source, target in mapping.items()}
    used = set(mapping)
    for name in canonical:
        if name in chosen:
            continue
        if name in columns and name not in used:
            chosen[name] = name
            used.add(name)
            continue
        accepted = {name, *task.column_aliases.get(name, ())}
        candidates = [
            c
            for c in columns
            if c not in used and c not in canonical and c.strip().lower() in accepted
        ]
        if len(candidates) > 1:
            raise InvalidInput(
                f"column '{name}' is missing and several columns could stand for it: "
                f"{_names(candidates)}; choose one with column_mapping, "
                f"e.g. {json.dumps({candidates[0]: name})}",
                code="ambiguous_column",
                field=name,
                columns=columns,
            )
        if candidates:
            chosen[name] = candidates[0]
            used.add(candidates[0])
    missing = [name for name in task.required_columns if name not in chosen]
    if missing:
        if first_row is not None:
            raise _missing_positions(task, columns, missing, used, first_row)
        raise _missing_columns(task, columns, missing, used)
    return chosen


def _missing_columns(
    task: TaskSpec, columns: list[str], missing: list[str], used: set[str]
) -> InvalidInput:
    spare = [c for c in columns if c not in used]
    example = {
        spare[i] if i < len(spare) else f"<your {m} column>": m for i, m in enumerate(missing)
    }
    advice = f"rename yours with column_mapping, e.g. {json.dumps(example)}"
    hint = ""
    data_like = ""
    if len(columns) == 1 and ("," in columns[0] or "\t" in columns[0]):
        hint = " (the header holds a single column with a delimiter in it: is format right?)"
    elif data_like := looks_like_data(columns):
        # A file without a header line (ag_news): its first row was taken for column names.
        hint = f" (the first line looks like a row of data, not column names: {data_like})"
        positions = {m: i for i, m in enumerate(missing)}
        advice += (
            f"; or, if the file has no header line, upload it with header=false and map its "
            f"columns by 0-based position ({_fields(columns)}), e.g. {json.dumps(positions)}"
        )
    error = InvalidInput(
        f"missing required column{'s' if len(missing) > 1 else ''} {_names(missing)}: "
        f"the file has columns {_names(columns)}{hint}; task '{task.name}' requires "
        f"{_names(list(task.required_columns))} (optional: "
        f"{_names(list(task.optional_columns))}); {advice}",
        code="missing_column",
        field=missing[0],
        columns=columns,
        required=list(task.required_columns),
    )
    if data_like:
        error.details["suggest"] = {"header": False}
    return error


def _missing_positions(
    task: TaskSpec, columns: list[str], missing: list[str], used: set[str], first_row: list[str]
) -> InvalidInput:
    spare = [int(c) for c in columns if c not in used]
    example = {m: spare[i] if i < len(spare) else i for i, m in enumerate(missing)}
    return InvalidInput(
        f"missing required column{'s' if len(missing) > 1 else ''} {_names(missing)}: the file "
        f"has no header line (header=false), so its {len(columns)} columns are numbered 0 to "
        f"{len(columns) - 1} (the first row has {_fields(first_row)}); task '{task.name}' "
        f"requires {_names(list(task.required_columns))} (optional: "
        f"{_names(list(task.optional_columns))}); map them by position with column_mapping, "
        f"e.g. {json.dumps(example)}",
        code="missing_column",
        field=missing[0],
        columns=columns,
        required=list(task.required_columns),
    )


# A column name longer than this, or of more words, reads like a text rather than a name.
NAME_MAX_CHARS = 40
NAME_MAX_WORDS = 5
_NUMBER = re.compile(r"[+-]?(\d+([.,]\d*)?|[.,]\d+)")
PREVIEW_CHARS = 30


def looks_like_data(names: list[str]) -> str:
    """Why a header line reads like a row of data (numbers, sentences), or "" when it does not."""
    numbers = [n for n in names if _NUMBER.fullmatch(n.strip())]
    texts = [n for n in names if len(n) > NAME_MAX_CHARS or len(n.split()) > NAME_MAX_WORDS]
    reasons = []
    if numbers:
        reasons.append(f"{_preview(numbers[0])} is a number")
    if texts:
        reasons.append(f"{_preview(texts[0])} reads like a text")
    return " and ".join(reasons)


def _preview(text: str) -> str:
    return repr(text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "...")


def _fields(values: list[str]) -> str:
    """'0: '3', 1: 'Wall St. Bears...'' for a message, at most 10 fields."""
    shown = ", ".join(f"{i}: {_preview(v)}" for i, v in enumerate(values[:10]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > 10 else "")


def _first_row(table: pa.Table) -> list[str]:
    """The first data row's values as text, for a message about a file without a header."""
    if table.num_rows == 0:
        return []
    return ["" if v is None else str(v) for v in table.slice(0, 1).to_pylist()[0].values()]


def _names(names: list[str]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


def check_cell_lengths(table: pa.Table, chosen: dict[str, str], *, limit: int) -> None:
    """Refuse a text cell longer than `limit` characters, naming its row and column."""
    import pyarrow.compute as pc

    for source in chosen.values():
        column = table.column(source)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        too_long = pc.greater(pc.utf8_length(column), limit)
        if pc.any(too_long).as_py():
            row = pc.index(too_long, True).as_py() + 1
            raise InvalidInput(
                f"row {row}: column '{source}' has more than {limit} characters",
                code="cell_too_long",
                row=row,
                field=source,
            )


def check_not_flattened(
    task: TaskSpec, table: pa.Table, chosen: dict[str, str], rows: datasets.Dataset
) -> None:
    """Refuse lists or objects in a column the task stores as plain text: their str() is noise."""
    import datasets as hf
    import pyarrow.compute as pc

    for name, source in chosen.items():
        column = table.column(source)
        feature = rows.features.get(name)
        is_text = isinstance(feature, hf.Value) and feature.dtype in ("string", "large_string")
        if not (is_text and pa.types.is_nested(column.type)):
            continue
        row = pc.index(column.is_valid(), True).as_py() + 1
        kind = "objects" if pa.types.is_struct(column.type) else "lists"
        raise InvalidInput(
            f"row {row}: column '{name}' holds {kind} ({column.type}) where task '{task.name}' "
            f"expects text; put a plain string in each row",
            code="invalid_column_type",
            row=row,
            field=name,
        )


def _select(table: pa.Table, chosen: dict[str, str]) -> datasets.Dataset:
    import datasets as hf

    sub = table.select(list(chosen.values())).rename_columns(list(chosen))
    try:
        return hf.Dataset(sub)
    except (pa.ArrowException, TypeError, ValueError, NotImplementedError) as exc:
        raise InvalidInput(
            f"unsupported column types in the file: {exc}", code="parse_error"
        ) from None


def detect_format(task: TaskSpec, path: Path, *, filename: str | None) -> DatasetFormat:
    """The task's own format when the content looks like one, else a generic one."""
    with path.open("rb") as f:
        head = f.read(parsing.SNIFF_BYTES).decode("utf-8", errors="replace")
    native = task.sniff_format(head, filename=filename)
    if native is not None:
        return DatasetFormat(native)
    return parsing.detect_format(path, filename=filename)


def read_rows(
    task: TaskSpec,
    fmt: DatasetFormat,
    path: Path,
    *,
    limits: parsing.ParseLimits,
    header: bool = True,
) -> ParsedTable:
    """Parse the upload: task-specific formats by their task, the generic ones here."""
    if not header and fmt not in (DatasetFormat.CSV, DatasetFormat.TSV):
        raise InvalidInput(
            f"header=false is for CSV and TSV files, whose first line may or may not name the "
            f"columns; this file is {fmt.value}, which names its fields itself",
            field="header",
        )
    if fmt.value in task.native_formats:
        if path.stat().st_size == 0:
            raise InvalidInput("the uploaded file is empty", code="empty_file", field="file")
        return task.read_native(path, fmt.value, max_rows=limits.max_rows)
    owners = sorted(name for name, t in REGISTRY.items() if fmt.value in t.native_formats)
    if owners:
        raise InvalidInput(
            f"format '{fmt.value}' is for task {' or '.join(repr(o) for o in owners)}, "
            f"not '{task.name}'",
            code="unknown_format",
            field="format",
        )
    return parsing.read_table(path, fmt, limits=limits, header=header)


@contextmanager
def file_context(parsed: ParsedTable, chosen: dict[str, str]) -> Iterator[None]:
    """Add the file's line (and column name, when renamed) to a task's row error."""
    try:
        yield
    except InvalidInput as exc:
        # The task names a data row and a canonical column; add the file's line and column name.
        row, column = exc.details.get("row"), exc.details.get("field")
        if isinstance(column, str) and chosen.get(column, column) != column:
            exc.message += f" (column '{chosen[column]}' in the file)"
            exc.details["column"] = chosen[column]
        line = parsed.line_of(row) if isinstance(row, int) else None
        if line is not None:
            exc.message += f" (line {line} of the file)"
            exc.details["line"] = line
        exc.args = (exc.message,)
        raise
    except (pa.ArrowException, TypeError, ValueError, NotImplementedError) as exc:
        raise InvalidInput(f"could not read the rows: {exc}", code="invalid_rows") from None


def _write_parquet(ds: datasets.Dataset, path: Path) -> None:
    import pyarrow.parquet as pq

    table = ds.with_format("arrow")[:]
    pq.write_table(table, path)


_UNSAFE = re.compile(r"\s+")


def display_name(name: str | None, filename: str | None) -> str:
    """The dataset's label: the given name, else the base name of the client's file name."""
    if name is not None and name.strip():
        return _clean(name)
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _clean(base)
    return cleaned if cleaned not in ("", ".", "..") else "dataset"


def _clean(text: str) -> str:
    # Drop control and format characters (newlines, RTL overrides), squeeze whitespace.
    kept = "".join(c for c in text if not unicodedata.category(c).startswith("C"))
    return _UNSAFE.sub(" ", kept).strip()[:200]


def get_dataset(session: Session, *, tenant: str, dataset_id: str) -> Dataset:
    """The tenant's dataset with this id, or NotFound naming it (also for another tenant's)."""
    row = get_by_id(session, Dataset, dataset_id)
    if row is None or row.tenant_id != tenant:
        raise NotFound(f"dataset '{dataset_id}' not found", id=dataset_id)
    return row


def list_datasets(
    session: Session, *, tenant: str, limit: int, after: str | None
) -> tuple[list[Dataset], str | None]:
    """One page of the tenant's datasets, newest first, and the cursor of the next page."""
    stmt = select(Dataset).where(Dataset.tenant_id == tenant)
    return page_newest_first(session, stmt, Dataset, limit=limit, after=after)


def delete_dataset(session: Session, *, settings: Settings, tenant: str, dataset_id: str) -> None:
    """Delete a dataset no job references: the row, then its files."""
    row = get_dataset(session, tenant=tenant, dataset_id=dataset_id)
    refs = or_(Job.train_dataset_id == dataset_id, Job.validation_dataset_id == dataset_id)
    job_ids = list(session.scalars(select(Job.id).where(refs).order_by(Job.id).limit(10)))
    job_ids = job_ids or _named_by_active_jobs(session, tenant=tenant, dataset_id=dataset_id)
    if job_ids:
        raise _in_use(dataset_id, job_ids)
    session.delete(row)
    try:
        session.commit()
    except IntegrityError:
        # A job was submitted between the check and the commit; the foreign key said no.
        session.rollback()
        raise _in_use(dataset_id, []) from None
    if row.storage_path.startswith("datasets/"):
        get_store(settings).delete(row.storage_path)


def _forget(store: Store, key: str) -> None:
    """Remove a tree that never got a row (best effort: without its manifest it is invisible)."""
    try:
        store.delete(key)
    except Exception:  # the store is down: the tree was never completed, nothing refers to it
        log.warning("could not tidy %s from the store", key, exc_info=True)


def _named_by_active_jobs(session: Session, *, tenant: str, dataset_id: str) -> list[str]:
    """The tenant's queued or running jobs whose method options name the dataset (a distill
    job's transfer set: MethodSpec.datasets_named), which their workers still have to read."""
    from pydantic import ValidationError

    from app.ml.methods import METHODS

    active = select(Job.id, Job.spec).where(
        Job.tenant_id == tenant, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
    )
    named: list[str] = []
    for job_id, spec in session.execute(active):
        options = (spec or {}).get("method") or {}
        method = METHODS.get(str(options.get("type")))
        if method is None:  # a job kind (quantize, export): no options that name datasets
            continue
        try:
            parsed = method.options_model.model_validate(options)
        except ValidationError:  # stored by a version whose options differ: names none now
            continue
        if dataset_id in method.datasets_named(parsed):
            named.append(job_id)
    return sorted(named)[:10]


def _in_use(dataset_id: str, job_ids: list[str]) -> Conflict:
    which = f" by job(s) {', '.join(job_ids)}" if job_ids else " by a job"
    return Conflict(
        f"dataset '{dataset_id}' is used{which}; delete those jobs first",
        id=dataset_id,
        jobs=job_ids,
    )


def load_rows(settings: Settings, dataset: Dataset) -> datasets.Dataset:
    """The stored, normalized rows of a dataset, for training and evaluation."""
    import datasets as hf
    import pyarrow.parquet as pq

    try:
        path = get_store(settings).local(dataset.storage_path) / DATA_FILE
    except NotInStore:
        path = None
    if path is None or not path.is_file():
        raise NotFound(f"the files of dataset '{dataset.id}' are missing", id=dataset.id)
    return hf.Dataset(pq.read_table(path))
