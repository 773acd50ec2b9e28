"""Stage 3 on real traffic: judge the canary on what production roots mirror to it.

Production roots with ``[shadow]`` in their root config send a sample of their requests to
the canary root and compare both answers (``root.shadow``). This analysis drives no traffic
of its own: it scrapes every root and leaf of both sides, waits until the production roots
have mirrored ``min_requests`` requests (at most ``window_s``), scrapes again and judges the
window: error rates and latency, canary against production, with the same judge as the
synthetic analysis (``deploy.canary.judge``), plus, per model, the share of mirrored results
whose canary answer failed or differed from production's answer to the same request.
Runs on the rollout's event loop; scrapes run in threads.
"""

from __future__ import annotations

import asyncio
import time
from typing import Sequence

from deploy.canary import FAIL, MARGINAL, PASS, AnalysisReport, MetricResult, SideObservation, judge
from deploy.fleet_config import ShadowAnalysisConfig
from deploy.metrics_scrape import ScrapeError, Snapshot, delta, merge, scrape
from deploy.plan import AnalysisConfig, Plan
from deploy.trim_analysis import RootWindow, judge_trimming

SENT = "rootleaf_root_shadow_requests_total"
RESULTS = "rootleaf_root_shadow_results_total"
POLL_S = 0.5


async def _scrape(urls: Sequence[str]) -> Snapshot:
    return merge(await asyncio.gather(*(asyncio.to_thread(scrape, u) for u in urls)))


def _side(root_window: Snapshot, leaf_window: Snapshot | None) -> SideObservation:
    """What one side did, from its counters alone (no client of our own to count)."""
    total = root_window.total("rootleaf_root_model_results_total")
    ok = root_window.total("rootleaf_root_model_results_total", code="OK")
    return SideObservation(requests=int(root_window.total("rootleaf_root_requests_total")), model_results=int(total),
                           model_errors=int(total - ok), root_window=root_window, leaf_window=leaf_window)


def mismatch_metrics(window: Snapshot, models: Sequence[str], cfg: ShadowAnalysisConfig) -> list[MetricResult]:
    """Per model: the share of compared mirrored results that failed or differed on the canary."""
    out = []
    for model in models:
        by = window.by_label(RESULTS, "outcome", model=model)
        compared = by.get("match", 0.0) + by.get("differ", 0.0) + by.get("canary_error", 0.0)
        name = f"shadow[{model}]"
        if compared == 0:
            out.append(MetricResult(name, None, None, FAIL, True, "no mirrored result compared", "shadow"))
            continue
        bad = (by.get("differ", 0.0) + by.get("canary_error", 0.0)) / compared
        verdict = FAIL if bad > cfg.max_mismatch_rate else PASS
        out.append(MetricResult(name, bad, 0.0, verdict, True,
                                f"{compared:.0f} compared: {by.get('differ', 0):.0f} differ, "
                                f"{by.get('canary_error', 0):.0f} canary errors (max rate {cfg.max_mismatch_rate})",
                                "shadow"))
    return out


def rescore(metrics: Sequence[MetricResult], cfg: AnalysisConfig, requests: int, window_s: float) -> AnalysisReport:
    """Score and verdict as ``deploy.canary.judge`` computes them, over ``metrics``."""
    points = sum(1.0 if m.verdict == PASS else 0.5 if m.verdict == MARGINAL else 0.0 for m in metrics)
    score = 100.0 * points / len(metrics) if metrics else 0.0
    if any(m.critical and m.verdict == FAIL for m in metrics):
        score = 0.0
    verdict = PASS if score >= cfg.pass_score else MARGINAL if score >= cfg.marginal_score else FAIL
    return AnalysisReport(round(score, 1), verdict, tuple(metrics), requests, round(window_s, 3))


async def run_shadow_analysis(plan: Plan, models: Sequence[str]) -> AnalysisReport:
    """Wait for mirrored traffic, then judge canary against production on it."""
    cfg = plan.shadow or ShadowAnalysisConfig()
    groups = [
        [r.metrics_url for r in plan.canary.roots if r.metrics_url],
        [r.metrics_url for r in plan.production.roots if r.metrics_url],
        [lf.metrics_url for lf in plan.canary.leaves if lf.metrics_url],
        [lf.metrics_url for lf in plan.production.leaves if lf.metrics_url],
    ]
    # Every root on its own too: the trimming metrics judge each canary root (deploy.trim_analysis).
    roots = [[(r.target, r.metrics_url) for r in role.roots if r.metrics_url] for role in (plan.canary, plan.production)]
    try:
        before = [await _scrape(g) for g in groups]
        roots_before = [await asyncio.gather(*(asyncio.to_thread(scrape, u) for _, u in side)) for side in roots]
        start = time.monotonic()
        mirrored = 0.0
        while True:
            now = await _scrape(groups[1])
            mirrored = delta(before[1], now).total(SENT, outcome="sent")
            if mirrored >= cfg.min_requests or time.monotonic() - start + POLL_S > cfg.window_s:
                break
            await asyncio.sleep(POLL_S)
        # Mirrored calls still in flight finish within their deadline; give them one poll.
        await asyncio.sleep(POLL_S)
        after = [await _scrape(g) for g in groups]
        roots_after = [await asyncio.gather(*(asyncio.to_thread(scrape, u) for _, u in side)) for side in roots]
    except ScrapeError as exc:
        metric = MetricResult("shadow_traffic", None, None, FAIL, True, f"cannot scrape ({exc})", "scrape")
        return rescore([metric], plan.analysis, 0, 0.0)
    window_s = time.monotonic() - start
    windows = [delta(b, a) for b, a in zip(before, after)]
    mirrored = windows[1].total(SENT, outcome="sent")
    canary = _side(windows[0], windows[2] if groups[2] else None)
    production = _side(windows[1], windows[3] if groups[3] else None)
    base = judge(canary, production, plan.analysis, (), window_s)
    enough = mirrored >= cfg.min_requests
    traffic = MetricResult("shadow_traffic", mirrored, float(cfg.min_requests), PASS if enough else FAIL, True,
                           f"{mirrored:.0f} requests mirrored in {window_s:.1f} s (need {cfg.min_requests})", "shadow")
    dropped = windows[1].by_label(SENT, "outcome")
    if any(k != "sent" and v for k, v in dropped.items()):
        traffic = MetricResult(traffic.name, traffic.canary, traffic.baseline, traffic.verdict, True,
                               traffic.detail + "; not mirrored: " + ", ".join(
                                   f"{v:.0f} {k}" for k, v in sorted(dropped.items()) if k != "sent" and v), "shadow")
    canary_roots, production_roots = (
        [RootWindow(target, delta(b, a), a) for (target, _), b, a in zip(side, bs, as_)]
        for side, bs, as_ in zip(roots, roots_before, roots_after)
    )
    trimming = judge_trimming(canary_roots, production_roots, plan.analysis, models, plan.bundle)
    metrics = [traffic, *base.metrics, *mismatch_metrics(windows[1], models, cfg), *trimming]
    return rescore(metrics, plan.analysis, int(mirrored), window_s)
