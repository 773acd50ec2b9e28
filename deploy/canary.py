"""Automated canary analysis: drive identical traffic through the canary and the baseline
roots (spread over every root of each side), scrape every root's (and leaf's) Prometheus
endpoint over the window, and judge canary against baseline.

Metrics: what trimming is for, on every root of each side (``deploy.trim_analysis``:
untrimmed share per model, root->leaf bytes per request per partition, bundle health,
unserved versions), error rate (root model results, and leaf requests when leaf endpoints are given),
latency p50/p99 (the root's request-latency histogram over the window), and each model's
score distribution. Scores are the raw first-output values returned to the analysis's own
requests, not samples rebuilt from the score histogram: rebuilt samples carry only bucket
resolution (ties everywhere, shifts inside a bucket invisible), whereas the raw values are
exact and come from the same requests on both sides, so any shift is the model's doing.
The judge is Mann-Whitney U (scipy) with an effect-size gate, plus explicit thresholds
(median shift, minimum samples, non-finite scores, error-rate increase) so a canary that is
far worse on few samples cannot pass. Score 0-100 as in Kayenta: a failed critical metric
forces 0. Traffic runs on the caller's event loop; scrapes run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import grpc
import numpy as np
from scipy.stats import mannwhitneyu

from deploy.metrics_scrape import Snapshot, delta, histogram_quantile, merge, scrape
from deploy.plan import AnalysisConfig
from deploy.trim_analysis import RootWindow, judge_trimming
from deploy.verdict import FAIL, MARGINAL, PASS, MetricResult
from wire.codec import CodecError, decode
from protos.rootleaf.v1 import root_pb2, root_pb2_grpc
from transport.server import GRPC_OPTIONS
from transport.tls import PLAINTEXT, TlsConfig, aio_channel

MAX_SAMPLES = 50_000  # per side and model: keeps the U test fast on large windows


@dataclass(slots=True)
class SideObservation:
    """What one side (canary or baseline) did during the window."""

    requests: int = 0
    rpc_errors: int = 0
    model_results: int = 0
    model_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)
    versions: dict[str, set[str]] = field(default_factory=dict)
    root_window: Snapshot | None = None
    leaf_window: Snapshot | None = None
    roots: list[RootWindow] = field(default_factory=list)
    """Each root's own window and end-of-window gauges (the trimming metrics are per root)."""

    def model_scores(self, model: str) -> np.ndarray:
        parts = self.scores.get(model, [])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class AnalysisReport:
    """The judge's output: overall score and verdict plus every metric."""

    score: float
    verdict: str
    metrics: tuple[MetricResult, ...]
    requests_per_side: int
    window_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "verdict": self.verdict,
            "requests_per_side": self.requests_per_side,
            "window_s": self.window_s,
            "metrics": [asdict(m) for m in self.metrics],
        }

    def table(self) -> str:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.4g}"

        rows = [("metric", "canary", "baseline", "verdict", "detail")]
        rows += [
            (m.name + (" *" if m.critical else ""), fmt(m.canary), fmt(m.baseline), m.verdict, m.detail)
            for m in self.metrics
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        lines.append(f"score {self.score:.1f}/100 -> {self.verdict}   (* critical)")
        return "\n".join(lines)


def make_requests(cfg: AnalysisConfig, models: Sequence[str]) -> list[root_pb2.ScoreRequest]:
    """The seeded request set both sides receive."""
    rng = np.random.default_rng(cfg.seed)
    users = rng.integers(cfg.user_ids[0], cfg.user_ids[1], size=cfg.requests)
    items = rng.integers(cfg.item_ids[0], cfg.item_ids[1], size=(cfg.requests, cfg.candidates_per_request))
    refs = [root_pb2.ModelRef(name=m) for m in models]
    return [
        root_pb2.ScoreRequest(
            request_id=f"canary-analysis-{i}",
            user_id=int(users[i]),
            candidate_ids=items[i].tolist(),
            models=refs,
        )
        for i in range(cfg.requests)
    ]


async def _drive(
    targets: Sequence[str],
    requests: Sequence[root_pb2.ScoreRequest],
    cfg: AnalysisConfig,
    side: SideObservation,
    tls: TlsConfig = PLAINTEXT,
) -> None:
    """Send ``requests`` round-robin over ``targets`` (every root of one side), at most
    ``cfg.concurrency`` in flight per root."""
    async with contextlib.AsyncExitStack() as stack:
        stubs = []
        for target in targets:
            channel = await stack.enter_async_context(aio_channel(target, tls, list(GRPC_OPTIONS)))
            stubs.append((root_pb2_grpc.RootStub(channel), asyncio.Semaphore(cfg.concurrency)))

        async def one(i: int, request: root_pb2.ScoreRequest) -> None:
            stub, gate = stubs[i % len(stubs)]
            async with gate:
                start = time.perf_counter()
                try:
                    response = await stub.Score(request, timeout=cfg.request_timeout_s)
                except grpc.aio.AioRpcError:
                    side.requests += 1
                    side.rpc_errors += 1
                    side.model_results += len(request.models)
                    side.model_errors += len(request.models)
                    return
                side.latencies_ms.append((time.perf_counter() - start) * 1000.0)
                side.requests += 1
                for result in response.results:
                    side.model_results += 1
                    if result.error_code != 0 or not result.outputs:
                        side.model_errors += 1
                        continue
                    try:
                        values = np.asarray(decode(result.outputs[0]), dtype=np.float64).ravel()
                    except CodecError:
                        side.model_errors += 1
                        continue
                    side.scores.setdefault(result.model, []).append(values)
                    side.versions.setdefault(result.model, set()).add(result.version)

        await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))


async def _scrape_all(urls: Sequence[str]) -> list[Snapshot]:
    return list(await asyncio.gather(*(asyncio.to_thread(scrape, u) for u in urls)))


async def run_analysis(
    cfg: AnalysisConfig,
    models: Sequence[str],
    canary_roots: Sequence[tuple[str, str]],
    baseline_roots: Sequence[tuple[str, str]],
    canary_leaf_metrics: Sequence[str] = (),
    baseline_leaf_metrics: Sequence[str] = (),
    tls: TlsConfig = PLAINTEXT,
    bundle: str = "",
) -> AnalysisReport:
    """Drive the same requests through both sides at once (over ``tls``), spread over every
    root of each side (``(target, metrics_url)`` pairs), scrape every root and leaf, and judge."""
    requests = make_requests(cfg, models)
    sides = [([t for t, _ in canary_roots], SideObservation()), ([t for t, _ in baseline_roots], SideObservation())]
    if cfg.warmup_requests:
        warm = make_requests(replace(cfg, requests=cfg.warmup_requests, seed=cfg.seed + 1), models)
        await asyncio.gather(*(_drive(targets, warm, cfg, SideObservation(), tls) for targets, _ in sides))
    urls = [[u for _, u in canary_roots], [u for _, u in baseline_roots],
            list(canary_leaf_metrics), list(baseline_leaf_metrics)]
    before = [await _scrape_all(u) for u in urls]
    start = time.monotonic()
    await asyncio.gather(*(_drive(targets, requests, cfg, side, tls) for targets, side in sides))
    window = time.monotonic() - start
    after = [await _scrape_all(u) for u in urls]
    windows = [delta(merge(b), merge(a)) if u else None for u, b, a in zip(urls, before, after)]
    (_, canary), (_, baseline) = sides
    canary.root_window, baseline.root_window = windows[0], windows[1]
    canary.leaf_window, baseline.leaf_window = windows[2], windows[3]
    for i, (side, roots) in enumerate(((canary, canary_roots), (baseline, baseline_roots))):
        side.roots = [RootWindow(target, delta(b, a), a) for (target, _), b, a in zip(roots, before[i], after[i])]
    return judge(canary, baseline, cfg, models, window, bundle)


def _error_rate(side: SideObservation) -> tuple[float, str]:
    client = side.model_errors / side.model_results if side.model_results else 1.0
    if side.root_window is not None:
        total = side.root_window.total("rootleaf_root_model_results_total")
        ok = side.root_window.total("rootleaf_root_model_results_total", code="OK")
        if total > 0:
            # Conservative: errors seen by either the root's counters or the client count.
            return max(client, (total - ok) / total), "scrape+client"
    return client, "client"


def _latency(side: SideObservation, q: float) -> tuple[float | None, str]:
    if side.root_window is not None:
        value = histogram_quantile(side.root_window, "rootleaf_root_request_seconds", q)
        if value is not None:
            return value * 1000.0, "scrape"
    if side.latencies_ms:
        return float(np.quantile(side.latencies_ms, q)), "client"
    return None, "none"


def _judge_scores(model: str, c: np.ndarray, b: np.ndarray, cfg: AnalysisConfig, versions: str) -> MetricResult:
    name = f"score[{model}]"
    if c.size < cfg.min_samples or b.size < cfg.min_samples:
        return MetricResult(name, None, None, FAIL, True,
                            f"too few samples (canary {c.size}, baseline {b.size}, need {cfg.min_samples})", "responses")
    bad = int(np.count_nonzero(~np.isfinite(c)))
    if bad:
        return MetricResult(name, None, float(np.median(b)), FAIL, True, f"{bad} non-finite canary scores", "responses")
    c, b = c[:MAX_SAMPLES], b[:MAX_SAMPLES]
    med_c, med_b = float(np.median(c)), float(np.median(b))
    shift = abs(med_c - med_b)
    if np.ptp(c) == 0 and np.ptp(b) == 0 and c[0] == b[0]:
        p, effect = 1.0, 0.0  # identical constants: the U test's variance is zero
    else:
        u, p = mannwhitneyu(c, b, alternative="two-sided", method="asymptotic")
        p = float(p) if math.isfinite(p) else 1.0
        effect = float(2.0 * u / (c.size * b.size) - 1.0)  # rank-biserial correlation
    detail = f"{versions}; n={c.size}/{b.size} p={p:.3g} r={effect:+.3f} shift={shift:.4f}"
    if shift > cfg.max_score_shift:
        verdict = FAIL
        detail += f" > max_score_shift {cfg.max_score_shift}"
    elif p < cfg.alpha and abs(effect) > cfg.max_effect_size:
        verdict = FAIL
        detail += f" (|r| > {cfg.max_effect_size})"
    elif p < cfg.alpha:
        verdict = MARGINAL
    else:
        verdict = PASS
    return MetricResult(name, med_c, med_b, verdict, True, detail, "responses")


def judge(
    canary: SideObservation,
    baseline: SideObservation,
    cfg: AnalysisConfig,
    models: Sequence[str],
    window_s: float = 0.0,
    bundle: str = "",
) -> AnalysisReport:
    """Compare the two sides; pure (no I/O), so it is tested on synthetic observations."""
    metrics: list[MetricResult] = []
    (err_c, src_c), (err_b, _) = _error_rate(canary), _error_rate(baseline)
    increase = err_c - err_b
    verdict = FAIL if increase > cfg.max_error_rate_increase else (
        MARGINAL if increase > cfg.max_error_rate_increase / 2 else PASS)
    metrics.append(MetricResult("error_rate", err_c, err_b, verdict, True,
                                f"increase {increase:+.4f} (max {cfg.max_error_rate_increase})", src_c))
    if canary.leaf_window is not None and baseline.leaf_window is not None:
        rates = []
        for w in (canary.leaf_window, baseline.leaf_window):
            total = w.total("rootleaf_leaf_requests_total")
            rates.append((total - w.total("rootleaf_leaf_requests_total", code="OK")) / total if total else 0.0)
        inc = rates[0] - rates[1]
        verdict = FAIL if inc > cfg.max_error_rate_increase else PASS
        metrics.append(MetricResult("leaf_error_rate", rates[0], rates[1], verdict, True,
                                    f"increase {inc:+.4f}", "scrape"))
    for q, limit in ((0.5, cfg.max_p50_ratio), (0.99, cfg.max_p99_ratio)):
        (lc, src), (lb, _) = _latency(canary, q), _latency(baseline, q)
        name = f"latency_p{int(q * 100)}_ms"
        if lc is None or lb is None:
            metrics.append(MetricResult(name, lc, lb, FAIL, False, "no latency observed", src))
            continue
        bound = lb * limit + cfg.latency_slack_ms
        half = lb * (1 + (limit - 1) / 2) + cfg.latency_slack_ms / 2
        verdict = FAIL if lc > bound else (MARGINAL if lc > half else PASS)
        metrics.append(MetricResult(name, lc, lb, verdict, False, f"limit {bound:.1f} ms", src))
    for model in models:
        versions = "canary v" + ",".join(sorted(canary.versions.get(model, {"?"}))) + \
            " vs baseline v" + ",".join(sorted(baseline.versions.get(model, {"?"})))
        metrics.append(_judge_scores(model, canary.model_scores(model), baseline.model_scores(model), cfg, versions))
    metrics += judge_trimming(canary.roots, baseline.roots, cfg, models, bundle)
    points = sum(1.0 if m.verdict == PASS else 0.5 if m.verdict == MARGINAL else 0.0 for m in metrics)
    score = 100.0 * points / len(metrics)
    if any(m.critical and m.verdict == FAIL for m in metrics):
        score = 0.0
    overall = PASS if score >= cfg.pass_score else MARGINAL if score >= cfg.marginal_score else FAIL
    return AnalysisReport(round(score, 1), overall, tuple(metrics), canary.requests, round(window_s, 3))


def report_json(report: AnalysisReport) -> str:
    return json.dumps(report.to_json(), indent=1, sort_keys=True)
