"""The canary judge's vocabulary: verdicts and one compared metric (shared by the analysis
modules and the rollout). Plain data."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAIL", "MARGINAL", "PASS", "MetricResult"]

PASS, MARGINAL, FAIL = "PASS", "MARGINAL", "FAIL"


@dataclass(frozen=True, slots=True)
class MetricResult:
    """One compared metric."""

    name: str
    canary: float | None
    baseline: float | None
    verdict: str
    critical: bool
    detail: str
    source: str
