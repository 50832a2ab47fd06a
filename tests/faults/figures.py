"""Figures the fault-injection scenarios collect, printed (and as one JSON line) at the end."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
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
    recovery_seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rec = sorted(self.recovery_seconds)

        def pct(p: float) -> float | None:
            if not rec:
                return None
            return round(rec[min(len(rec) - 1, int(p * len(rec)))], 2)

        return {
            "jobs": sum(len(v) for v in self.submitted.values()),
            "outcomes": self.outcomes,
            "kills": self.kills,
            "lost": self.lost,
            "duplicate_models": self.duplicate_models,
            "stuck_running": self.stuck_running,
            "recoveries": len(rec),
            "recovery_p50_s": round(statistics.median(rec), 2) if rec else None,
            "recovery_p95_s": pct(0.95),
            "api_answers_across_db_restart": {str(k): v for k, v in self.db_down_answers.items()},
        }


FIGURES = Figures()


def record_job(service: Any, job: dict[str, Any]) -> None:
    FIGURES.outcomes[job["status"]] = FIGURES.outcomes.get(job["status"], 0) + 1
