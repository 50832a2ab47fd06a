"""Print the fault-injection figures at the end of the run."""

from __future__ import annotations

import json
from typing import Any

from tests.faults.figures import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES.submitted:
        return
    summary = FIGURES.summary()
    terminalreporter.section("fault injection")
    for key, value in summary.items():
        terminalreporter.write_line(f"{key:>22}: {value}")
    terminalreporter.write_line(json.dumps({"fault_injection": summary}))
