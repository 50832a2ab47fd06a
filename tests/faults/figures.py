"""Figures the fault-injection scenarios collect, printed (and as one JSON line) at the end."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figures:
    # Job ids submitted, per service (its data directory).
    submitted: dict[str, list[str]] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    lost: int = 0
    duplicate_models: int = 0
    stuck_running: int = 0
    db_down_answers: dict[int, int] = field(default_factory=dict)
    # Seconds from the fault to the job's next attempt running, per kind of fault.
    recovery_seconds: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def merge(self, other: dict[str, Any]) -> None:
        """Add another process's figures (a pytest-xdist worker's `as_dict()`) to these."""
        for name, value in other.items():
            mine = getattr(self, name)
            if isinstance(mine, int):
                setattr(self, name, mine + value)
                continue
            for key, item in value.items():
                if isinstance(item, list):
                    mine.setdefault(key, []).extend(item)
                else:
                    mine[key] = mine.get(key, 0) + item

    def summary(self) -> dict[str, Any]:
        rec = sorted(x for values in self.recovery_seconds.values() for x in values)

        def pct(values: list[float], p: float) -> float | None:
            values = sorted(values)
            if not values:
                return None
            return round(values[min(len(values) - 1, int(p * len(values)))], 2)

        return {
            "jobs": sum(len(v) for v in self.submitted.values()),
            "outcomes": self.outcomes,
            "kills": self.kills,
            "lost": self.lost,
            "duplicate_models": self.duplicate_models,
            "stuck_running": self.stuck_running,
            "recoveries": len(rec),
            "recovery_p50_s": round(statistics.median(rec), 2) if rec else None,
            "recovery_p95_s": pct(rec, 0.95),
            "recovery_by_fault": {
                k: {"n": len(v), "p50_s": round(statistics.median(v), 2), "p95_s": pct(v, 0.95)}
                for k, v in self.recovery_seconds.items()
            },
            "api_answers_across_db_restart": {str(k): v for k, v in self.db_down_answers.items()},
        }


FIGURES = Figures()


def record_job(service: Any, job: dict[str, Any]) -> None:
    FIGURES.outcomes[job["status"]] = FIGURES.outcomes.get(job["status"], 0) + 1
