"""Soak outcomes attributed to fault phases, and the availability targets."""

from __future__ import annotations

from harness.soak_load import Outcome
from harness.soak_report import Phase, by_fault, targets

PARTITION_OF = {"m_a": "alpha", "m_c": "beta"}


def _o(started: float, m_a: str = "OK", m_c: str = "OK", code: str = "OK", ms: float = 10.0) -> Outcome:
    models = {"m_a": m_a, "m_c": m_c} if code == "OK" else {}
    return Outcome(f"r{started}", started, ms / 1000, code, models)


def test_outcomes_go_to_the_phase_they_started_in() -> None:
    phases = [Phase("leaf_kill", "beta", 10.0, 20.0), Phase("storm", None, 30.0, 31.0)]
    outcomes = [
        _o(1.0), _o(12.0, m_c="UNAVAILABLE"), _o(13.0), _o(19.9, m_c="DEADLINE_EXCEEDED", ms=900.0),
        _o(30.5), _o(40.0, code="UNAVAILABLE"),
    ]
    report = by_fault(outcomes, phases, PARTITION_OF)
    kill = report["leaf_kill"]
    assert (kill["requests"], kill["succeeded"], kill["phases"]) == (3, 1, 1)
    assert kill["failed_by_code"] == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 1}
    assert kill["other_partitions_served_rate"] == 1.0  # alpha untouched by beta's fault
    assert report["storm"]["requests"] == 1 and report["storm"]["failed_by_code"] == {}
    steady = report["steady"]
    assert steady["requests"] == 2 and steady["failed_by_code"] == {"UNAVAILABLE": 1}
    assert steady["other_partitions_served_rate"] == 1.0  # a failed RPC has no model results
    # The steady p99 is 10 ms: the 900 ms call served alpha, but not within it.
    assert kill["other_partitions_within_steady_p99_rate"] == round(2 / 3, 6)


def test_targets_depend_on_replicas() -> None:
    base = {"lost": 0, "allowlist_violations": 0, "root_alive": True}
    by = {"leaf_kill": {"other_partitions_served_rate": 1.0}, "storm": {"other_partitions_served_rate": None}}
    assert all(targets({**base, "success_rate": 0.9995, "by_fault": by}, 2).values())
    assert not targets({**base, "success_rate": 0.998, "by_fault": by}, 2)["success_rate_ge_99.9"]
    assert all(targets({**base, "success_rate": 0.7, "by_fault": by}, 1).values())
    bad = {**by, "slow_leaf": {"other_partitions_served_rate": 0.99}}
    assert not targets({**base, "success_rate": 0.7, "by_fault": bad}, 1)["other_partitions_100"]
    assert not targets({**base, "lost": 1, "success_rate": 1.0, "by_fault": by}, 2)["lost_0"]


def test_a_call_in_flight_when_a_fault_starts_belongs_to_that_fault() -> None:
    phases = [Phase("leaf_kill", "beta", 10.0, 20.0)]
    report = by_fault([_o(9.9, m_c="UNAVAILABLE", ms=300.0), _o(9.0, ms=300.0)], phases, PARTITION_OF)
    assert report["leaf_kill"]["requests"] == 1 and report["steady"]["requests"] == 1
    assert report["steady"]["failed_by_code"] == {}
