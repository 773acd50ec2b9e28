"""A rollout's stage, status and analysis as Prometheus metrics.

Written next to the rollout state (``<state_dir>/rollout.prom``, Prometheus text format)
every time the state is saved, atomically, so node-exporter's textfile collector (or any
scraper of a file) exports them while the rollout runs and after it ends. Pure rendering
plus one atomic file write on the caller's thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from deploy.delivery import atomic_write

METRICS_FILE = "rollout.prom"
STATUSES = ("in_progress", "completed", "failed", "rolled_back")
VERDICTS = ("PASS", "MARGINAL", "FAIL")


def render(state: Mapping[str, Any]) -> bytes:
    """The metrics of one rollout state document."""
    registry = CollectorRegistry()
    bundle = str(state.get("bundle", ""))
    labels = {"bundle": bundle, "rollout": str(state.get("id", ""))}
    names = list(labels)
    Gauge("rootleaf_rollout_stage", "Stage the rollout is in or stopped at (1-5; 0 before stage 1)",
          names, registry=registry).labels(**labels).set(float(state.get("stage", 0)))
    status = Gauge("rootleaf_rollout_status", "1 for the rollout's current status", names + ["status"], registry=registry)
    for s in STATUSES:
        status.labels(**labels, status=s).set(1.0 if state.get("status") == s else 0.0)
    changes = state.get("changes", [])
    Gauge("rootleaf_rollout_changes", "Changes applied and not reverted", names, registry=registry).labels(
        **labels).set(float(sum(1 for c in changes if not c.get("reverted"))))
    analysis = state.get("analysis")
    if isinstance(analysis, Mapping):
        Gauge("rootleaf_rollout_analysis_score", "Canary analysis score (0-100)", names, registry=registry).labels(
            **labels).set(float(analysis.get("score", 0.0)))
        verdict = Gauge("rootleaf_rollout_analysis_verdict", "1 for the canary analysis verdict",
                        names + ["verdict"], registry=registry)
        for v in VERDICTS:
            verdict.labels(**labels, verdict=v).set(1.0 if analysis.get("verdict") == v else 0.0)
    return generate_latest(registry)


def export(state_dir: Path, state: Mapping[str, Any]) -> None:
    atomic_write(state_dir / METRICS_FILE, render(state))
