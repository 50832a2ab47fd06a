"""Figures for people: durations as the CLI and the dashboard show them."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """`1h02m`, `4m05s`, `12s`; `?` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
