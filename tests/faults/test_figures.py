"""The figures of several pytest-xdist workers add up to those of one process."""

from __future__ import annotations

from tests.faults.figures import Figures


def test_merged_figures_add_up() -> None:
    a, b = Figures(), Figures()
    a.submitted["d1"] = ["j1"]
    a.outcomes["succeeded"] = 1
    a.kills, a.lost = 2, 0
    a.db_down_answers[503] = 3
    a.recovery_seconds["pool process SIGKILL"] = [4.0]
    b.submitted["d2"] = ["j2", "j3"]
    b.outcomes.update(succeeded=1, failed=1)
    b.kills = 3
    b.db_down_answers.update({503: 1, 200: 5})
    b.recovery_seconds["pool process SIGKILL"] = [6.0]

    total = Figures()
    total.merge(a.as_dict())
    total.merge(b.as_dict())
    assert total.submitted == {"d1": ["j1"], "d2": ["j2", "j3"]}
    assert total.outcomes == {"succeeded": 2, "failed": 1}
    assert (total.kills, total.lost) == (5, 0)
    assert total.db_down_answers == {503: 4, 200: 5}
    assert total.summary()["recovery_by_fault"]["pool process SIGKILL"]["n"] == 2
    assert total.summary()["jobs"] == 3
