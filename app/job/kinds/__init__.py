"""The job kind registry: what a job does, decided by its `method.type`.

A training method's type makes a train job; a kind with options of its own (quantize, export) is
named by its own type. Adding a kind is a file here (its options model and JobKind), a line
below, and the worker's side: a file in worker/kinds/ and a line in that registry.
"""

from __future__ import annotations

from app.core.errors import InvalidInput
from app.job.kinds.base import JobKind, SubmitInputs
from app.job.kinds.export import Export
from app.job.kinds.quantize import Quantize
from app.job.kinds.train import Train
from app.ml.methods import MethodOptions

# By name; the API lists the `method.type`s of each kind in this order.
JOB_KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        Train(),
        Quantize(),
        Export(),
    )
}


def method_options() -> dict[str, type[MethodOptions]]:
    """Every `method.type` a job may be submitted with, and its options model."""
    return {
        name: model for kind in JOB_KINDS.values() for name, model in kind.options_models().items()
    }


def job_kind(method_type: str) -> JobKind:
    """The kind of a job submitted with `method.type` = `method_type`."""
    for kind in JOB_KINDS.values():
        if method_type in kind.options_models():
            return kind
    raise InvalidInput(
        f"method.type: expected one of {list(method_options())}; got '{method_type}'",
        field="method.type",
    )


__all__ = ["JOB_KINDS", "JobKind", "SubmitInputs", "job_kind", "method_options"]
