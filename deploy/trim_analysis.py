"""The canary analysis's trimming metrics: what the Feature Trimmer is for, judged on every
root of each side (a canary root that stops trimming fails even when another passes).

Per canary root, against the best baseline root (the one that trims most, sends least):

- ``untrimmed_share[model]``: share of the model's requests the root resolved untrimmed
  (``rootleaf_root_model_requests_total{decision="untrimmed"}``). More than
  ``max_untrimmed_share_increase`` above the baseline is a critical FAIL: the package turned
  trimming off for a model the baseline trims (a bundle the root refused, a served version or
  a model the bundle dropped, an empty map);
- ``bundle_healthy``: ``rootleaf_trimmer_bundle_healthy`` of the plan's bundle at the end of
  the window; 0 on the canary while the baseline is 1 is a critical FAIL (the root refused the
  file and runs on its last good map, or untrimmed);
- ``wire_bytes_per_request[partition]``: root->leaf wire bytes per Score call; above
  ``max_bytes_ratio`` times the baseline's is a FAIL;
- ``unserved_versions``: ``rootleaf_root_unserved_versions`` (bundle versions no leaf
  serves yet) at the end of the window; more than the baseline is a FAIL.

Pure functions of scraped snapshots (no I/O), so they are tested on synthetic windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from deploy.metrics_scrape import Snapshot
from deploy.plan import AnalysisConfig
from deploy.verdict import FAIL, PASS, MetricResult

__all__ = ["RootWindow", "judge_trimming"]

_DECISIONS = "rootleaf_root_model_requests_total"
_WIRE = "rootleaf_root_partition_bytes_total"
_CALLS = "rootleaf_root_requests_total"
_HEALTHY = "rootleaf_trimmer_bundle_healthy"
_UNSERVED = "rootleaf_root_unserved_versions"


@dataclass(frozen=True, slots=True)
class RootWindow:
    """One root's analysis window (counter deltas) and its gauges at the window's end."""

    target: str
    window: Snapshot
    end: Snapshot


def untrimmed_share(window: Snapshot, model: str) -> float | None:
    total = window.total(_DECISIONS, model=model)
    return window.total(_DECISIONS, model=model, decision="untrimmed") / total if total > 0 else None


def wire_bytes_per_request(window: Snapshot) -> dict[str, float]:
    calls = window.total(_CALLS)
    if calls <= 0:
        return {}
    return {p: v / calls for p, v in window.by_label(_WIRE, "partition", stage="wire").items() if p}


def bundle_healthy(end: Snapshot, bundle: str) -> float | None:
    """1 when every worker loaded ``bundle`` (every bundle when empty) cleanly, 0 when any failed."""
    values = list((end.select(_HEALTHY, bundle=bundle) if bundle else end.select(_HEALTHY)).values())
    return min(values) if values else None


def unserved_versions(end: Snapshot) -> float:
    return max(end.select(_UNSERVED).values(), default=0.0)


def _best(values: Sequence[float | None], *, low: bool = True) -> float | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return min(present) if low else max(present)


def judge_trimming(
    canary: Sequence[RootWindow], baseline: Sequence[RootWindow], cfg: AnalysisConfig,
    models: Sequence[str], bundle: str,
) -> list[MetricResult]:
    """One row per canary root and metric (nothing when either side was not scraped)."""
    if not canary or not baseline:
        return []
    out: list[MetricResult] = []
    for model in models:
        base = _best([untrimmed_share(r.window, model) for r in baseline])
        for root in canary:
            share = untrimmed_share(root.window, model)
            name = f"untrimmed_share[{model}]@{root.target}"
            if share is None:
                out.append(MetricResult(name, None, base, FAIL, True, "the root resolved no request of the model", "scrape"))
            elif base is not None and share - base > cfg.max_untrimmed_share_increase:
                out.append(MetricResult(
                    name, share, base, FAIL, True,
                    f"trimming is off for {model} on canary root {root.target}: {share:.0%} of its requests "
                    f"untrimmed vs {base:.0%} on the baseline", "scrape"))
            else:
                out.append(MetricResult(name, share, base, PASS, True,
                                        f"increase {share - (base or 0.0):+.3f} (max {cfg.max_untrimmed_share_increase})",
                                        "scrape"))
    base_health = _best([bundle_healthy(r.end, bundle) for r in baseline], low=False)
    for root in canary:
        health = bundle_healthy(root.end, bundle)
        name = f"bundle_healthy@{root.target}"
        if health is not None and health < 1 and (base_health is None or base_health >= 1):
            out.append(MetricResult(
                name, health, base_health, FAIL, True,
                f"canary root {root.target} refused bundle {bundle or '(any)'}: its last load failed "
                "(it runs on its last good map, or untrimmed)", "scrape"))
        else:
            out.append(MetricResult(name, health, base_health, PASS, True, "loaded cleanly", "scrape"))
    base_bytes = [wire_bytes_per_request(r.window) for r in baseline]
    for root in canary:
        for partition, value in sorted(wire_bytes_per_request(root.window).items()):
            ref = _best([b.get(partition) for b in base_bytes])
            name = f"wire_bytes_per_request[{partition}]@{root.target}"
            if ref is None or ref <= 0:
                out.append(MetricResult(name, value, ref, PASS, False, "no baseline traffic to compare", "scrape"))
                continue
            ratio = value / ref
            verdict = FAIL if ratio > cfg.max_bytes_ratio else PASS
            out.append(MetricResult(name, value, ref, verdict, False,
                                    f"ratio {ratio:.2f} (max {cfg.max_bytes_ratio})", "scrape"))
    base_unserved = _best([unserved_versions(r.end) for r in baseline], low=False) or 0.0
    for root in canary:
        value = unserved_versions(root.end)
        verdict = FAIL if value > base_unserved else PASS
        out.append(MetricResult(f"unserved_versions@{root.target}", value, base_unserved, verdict, False,
                                "bundle versions no leaf serves yet" if verdict == FAIL else "none pending",
                                "scrape"))
    return out
