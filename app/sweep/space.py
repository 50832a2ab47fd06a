"""Search spaces in a job spec: found, checked, turned into Optuna distributions, and filled in.

A search space is an object with one key in place of a value: {"loguniform": [1e-5, 1e-3]},
{"uniform": [0.0, 0.3]}, {"int": [4, 32]} or {"choice": [16, 32]}. It may stand for any value
under `hyperparameters` and under `method` (but `method.type`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.core.errors import InvalidInput
from app.core.validation import path_text, plain_errors
from app.job.schemas import JobCreate

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

KINDS = ("loguniform", "uniform", "int", "choice")
# Where a space may stand: the values of these objects, at any depth.
SWEEPABLE = ("hyperparameters", "method")
# Values under those that pick what a job is rather than how it trains.
FIXED = {("method", "type")}
MAX_CHOICES = 64

Path = tuple[str, ...]


@dataclass(frozen=True)
class Space:
    """One search space: where it stands in the spec and what it draws from."""

    path: Path
    kind: str
    values: tuple[Any, ...]  # (low, high) or the choices

    @property
    def field(self) -> str:
        return path_text(self.path)

    @property
    def name(self) -> str:
        """The parameter's name in the study and in a trial's `params`: its path, without
        `hyperparameters.` (`learning_rate`, `method.r`)."""
        path = self.path[1:] if self.path[0] == "hyperparameters" else self.path
        return ".".join(path)

    def distribution(self) -> BaseDistribution:
        from optuna import distributions

        if self.kind == "choice":
            return distributions.CategoricalDistribution(list(self.values))
        low, high = self.values
        if self.kind == "int":
            return distributions.IntDistribution(int(low), int(high))
        return distributions.FloatDistribution(
            float(low), float(high), log=self.kind == "loguniform"
        )

    def probes(self) -> list[tuple[str, Any]]:
        """Values a sample may take that the job spec must accept, each with how to name it."""
        if self.kind == "choice":
            return [(f"the choice {v!r}", v) for v in self.values]
        low, high = self.values
        probes = [(f"the lower bound {low!r}", low), (f"the upper bound {high!r}", high)]
        if self.kind != "int":
            # A value with a fraction: a uniform space on an integer field fails here.
            inner = math.exp(0.37 * math.log(high) + 0.63 * math.log(low))
            if self.kind == "uniform":
                inner = low + 0.37 * (high - low)
            probes.append((f"a sample such as {inner:.6g}", inner))
        return probes


def _fail(path: Path, message: str) -> InvalidInput:
    field = path_text(path)
    return InvalidInput(f"{field}: {message}", field=field)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_space(path: Path, node: dict[str, Any]) -> Space:
    """The space an object with a space key stands for; InvalidInput naming `path` if bad."""
    if len(node) != 1:
        raise _fail(
            path,
            f"a search space is an object with one key, one of {list(KINDS)}; got keys "
            f"{sorted(node)}",
        )
    kind, raw = next(iter(node.items()))
    if kind not in KINDS:
        raise _fail(path, f"unknown search space '{kind}'; expected one of {list(KINDS)}")
    if kind == "choice":
        return _choice(path, raw)
    if not isinstance(raw, list) or len(raw) != 2:
        raise _fail(path, f'{{"{kind}": [low, high]}} takes a list of two numbers')
    low, high = raw
    if not (_is_number(low) and _is_number(high)):
        raise _fail(path, f'{{"{kind}": [low, high]}} takes two numbers; got {low!r}, {high!r}')
    if not (math.isfinite(low) and math.isfinite(high)):
        raise _fail(path, f"{kind} bounds must be finite; got {low!r}, {high!r}")
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise _fail(path, f'{{"int": [low, high]}} takes two integers; got {low!r}, {high!r}')
    if not low < high:
        raise _fail(path, f"the lower bound {low!r} must be less than the upper bound {high!r}")
    if kind == "loguniform" and low <= 0:
        raise _fail(path, f"loguniform bounds must be greater than 0; got {low!r}")
    return Space(path, kind, (low, high))


def _choice(path: Path, raw: Any) -> Space:
    if not isinstance(raw, list) or not raw:
        raise _fail(path, '{"choice": [...]} takes a non-empty list of values')
    if len(raw) > MAX_CHOICES:
        raise _fail(path, f"a choice has at most {MAX_CHOICES} values; got {len(raw)}")
    for value in raw:
        if not (value is None or isinstance(value, str | int | float | bool)):
            raise _fail(path, f"choices are strings, numbers, booleans or null; got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(path, f"choices must be finite; got {value!r}")
    # Equal values (1 and 1.0, or true and 1) would be one choice to Optuna.
    if any(a == b for i, a in enumerate(raw) for b in raw[i + 1 :]):
        raise _fail(path, f"the choices repeat a value: {raw!r}")
    return Space(path, "choice", tuple(raw))


def find_spaces(spec: dict[str, Any]) -> list[Space]:
    """Every search space in a job spec, in document order; InvalidInput naming the field of
    the first that is malformed or stands where none may."""
    found: list[Space] = []
    _walk(spec, (), found)
    return found


def _walk(node: Any, path: Path, found: list[Space]) -> None:
    if isinstance(node, dict):
        if path and any(kind in node for kind in KINDS):
            if path[0] not in SWEEPABLE or len(path) < 2:
                roots = " and ".join(f"`{r}`" for r in SWEEPABLE)
                raise _fail(path, f"a search space is allowed only for values under {roots}")
            if path in FIXED:
                raise _fail(path, "a sweep's trials share one method: this takes no search space")
            found.append(parse_space(path, node))
            return
        for key, value in node.items():
            _walk(value, (*path, str(key)), found)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, dict) and any(kind in value for kind in KINDS):
                raise _fail(
                    (*path, str(index)),
                    "a search space stands for a whole value, not for an item of a list",
                )
            _walk(value, (*path, str(index)), found)


def materialize(
    spec: dict[str, Any], spaces: list[Space], params: dict[str, Any]
) -> dict[str, Any]:
    """The spec with each space replaced by its parameter's value."""
    filled = copy.deepcopy(spec)
    for space in spaces:
        node = filled
        for key in space.path[:-1]:
            node = node[key]
        node[space.path[-1]] = params[space.name]
    return filled


def job_create(spec: dict[str, Any]) -> JobCreate:
    """A filled-in spec as POST /v1/jobs reads it; InvalidInput naming the field otherwise."""
    try:
        return JobCreate.model_validate(spec)
    except ValidationError as exc:
        problems = plain_errors(exc.errors(), root=JobCreate)
        raise InvalidInput(
            "; ".join(p.message for p in problems),
            field=problems[0].field,
            errors=[p.as_dict() for p in problems],
        ) from None


def check_samples(spec: dict[str, Any], spaces: list[Space]) -> None:
    """Every space's bounds (or choices) and a value between them, each with the others at
    their first, must make a job spec that POST /v1/jobs accepts. A refusal of a sampled
    value names its space's field and the value; any other names its own field."""
    first = {s.name: s.probes()[0][1] for s in spaces}
    for space in spaces:
        for label, value in space.probes():
            try:
                job_create(materialize(spec, spaces, {**first, space.name: value}))
            except InvalidInput as exc:
                field = str(exc.details.get("field", ""))
                if field != space.field and not field.startswith(f"{space.field}."):
                    raise
                reason = exc.message.removeprefix(f"{field}: ")
                raise InvalidInput(
                    f"{space.field}: {label} of the {space.kind} space is refused: {reason}",
                    field=space.field,
                    space=space.kind,
                ) from None
