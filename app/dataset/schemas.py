"""Dataset schemas: the upload's form fields and the Dataset resource."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.db.models import Dataset


class DatasetFormat(StrEnum):
    CSV = "csv"
    TSV = "tsv"
    JSONL = "jsonl"
    JSON = "json"
    PARQUET = "parquet"
    # Read by the task that declares them in native_formats.
    CONLL = "conll"
    SQUAD = "squad"
    CHAT = "chat"  # OpenAI's chat fine-tuning JSONL, read by classification


class DatasetCreate(BaseModel):
    """The form fields of POST /v1/datasets, besides the file itself."""

    task: str = Field(description="Task the rows are for, e.g. 'classification'.")
    name: str | None = Field(
        default=None, max_length=200, description="A label; default: the file's base name."
    )
    format: DatasetFormat | None = Field(default=None, description="Detected when omitted.")
    column_mapping: dict[str, str] = Field(
        default_factory=dict,
        description='Source column -> canonical column, e.g. {"sentence": "text"}; without a '
        'header line the source columns are 0-based positions, e.g. {"0": "label"}.',
    )
    header: bool = Field(
        default=True,
        description="Whether the first line of a CSV or TSV file names its columns.",
    )
    strict: bool = Field(
        default=False,
        description="Refuse rows that would be repaired (e.g. an I- tag that follows nothing).",
    )


class DatasetRead(BaseModel):
    """An uploaded, validated dataset."""

    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    task: str
    format: DatasetFormat
    num_rows: int
    columns: list[str]
    label_names: list[str] | None = None
    label_counts: dict[str, int] | None = None
    column_mapping: dict[str, str] = Field(
        default_factory=dict, description="Renames applied: source column -> canonical column."
    )
    stats: dict[str, Any] = Field(
        default_factory=dict,
        description="What validation counted, converted or repaired (e.g. NER's IOB1 conversion).",
    )
    sha256: str
    size_bytes: int
    status: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: Dataset) -> DatasetRead:
        stats = dict(row.stats or {})
        mapping = stats.pop("column_mapping", None) or {}
        return cls(
            id=row.id,
            name=row.name,
            task=row.task,
            format=DatasetFormat(row.format),
            num_rows=row.num_rows,
            columns=list(row.columns),
            label_names=row.label_names,
            label_counts=row.label_counts,
            column_mapping=dict(mapping),
            stats=stats,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            status=row.status,
            created_at=row.created_at,
        )
