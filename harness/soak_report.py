"""Soak outcomes by fault phase: success rate, failures by code, latency and isolation.

The fault schedule records each fault as a ``Phase`` (kind, the partition it hit, start and
end on the monotonic clock, which the load process shares); every outcome is attributed to
the first phase its request overlapped (from send to answer: a call in flight when a leaf is
killed is that fault's), else to "steady". Per kind the report gives requests,
successes, the success rate, failed requests by code, p50/p99 latency, the share of model
results served for partitions *not* under that fault (isolation: 100% expected even with one
replica), and the share of those served within the steady phases' p99 (a request also waits
for the partition under fault until it fails, at most that partition's timeout). Pure
functions on the caller's thread.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from harness.soak_load import Outcome

STEADY = "steady"


@dataclass(frozen=True, slots=True)
class Phase:
    """One fault, from its first action to the end of its recovery."""

    kind: str
    partition: str | None
    """The partition it hit (None: every partition, e.g. a reload storm)."""
    start: float
    end: float


def _failure_code(outcome: Outcome) -> str:
    if outcome.code != "OK":
        return outcome.code
    return next(c for c in outcome.models.values() if c != "OK")


def _phase_of(outcome: Outcome, phases: Sequence[Phase]) -> Phase | None:
    for phase in phases:
        if outcome.started <= phase.end and outcome.started + outcome.elapsed_s >= phase.start:
            return phase
    return None


def by_fault(
    outcomes: Sequence[Outcome], phases: Sequence[Phase], partition_of: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Per fault kind (and "steady"): see the module docstring."""
    groups: dict[str, list[tuple[Outcome, Phase | None]]] = {}
    for outcome in outcomes:
        phase = _phase_of(outcome, phases)
        groups.setdefault(phase.kind if phase else STEADY, []).append((outcome, phase))
    report: dict[str, dict[str, Any]] = {}
    steady = groups.get(STEADY, [])
    steady_p99_s = float(np.percentile([o.elapsed_s for o, _ in steady], 99)) if steady else None
    for kind, members in sorted(groups.items()):
        failed: Counter[str] = Counter(_failure_code(o) for o, _ in members if not o.ok)
        latencies = np.array([o.elapsed_s * 1000.0 for o, _ in members])
        others_ok = others = others_fast = 0
        for outcome, phase in members:
            for model, code in outcome.models.items():
                if phase is not None and phase.partition is not None and partition_of.get(model) == phase.partition:
                    continue
                others += 1
                others_ok += code == "OK"
                others_fast += code == "OK" and steady_p99_s is not None and outcome.elapsed_s <= steady_p99_s
        succeeded = len(members) - sum(failed.values())
        report[kind] = {
            "phases": len({p for _, p in members if p is not None}),
            "requests": len(members),
            "succeeded": succeeded,
            "success_rate": round(succeeded / len(members), 6),
            "failed_by_code": dict(sorted(failed.items())),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "other_partitions_served_rate": round(others_ok / others, 6) if others else None,
            "other_partitions_within_steady_p99_rate": (
                round(others_fast / others, 6) if others and steady_p99_s is not None else None
            ),
        }
    return report


def targets(report: Mapping[str, Any], replicas: int) -> dict[str, bool]:
    """The availability targets: nothing lost, no allowlist violated, the root up; with two or
    more replicas >= 99.9% of requests succeed, with one every partition not under fault is
    fully served."""
    met = {
        "lost_0": report["lost"] == 0,
        "allowlist_violations_0": report["allowlist_violations"] == 0,
        "root_alive": bool(report["root_alive"]),
    }
    if replicas >= 2:
        met["success_rate_ge_99.9"] = report["success_rate"] >= 0.999
    else:
        met["other_partitions_100"] = all(
            v["other_partitions_served_rate"] in (None, 1.0) for v in report["by_fault"].values()
        )
    return met
