"""Canary judge on synthetic observations, and Prometheus window arithmetic."""

from __future__ import annotations

import json

import numpy as np

from deploy.canary import FAIL, MARGINAL, PASS, SideObservation, judge
from deploy.metrics_scrape import delta, histogram_quantile, parse
from deploy.plan import AnalysisConfig


def _side(scores: np.ndarray, errors: int = 0, latency_ms: float = 5.0) -> SideObservation:
    side = SideObservation(requests=100, model_results=100, model_errors=errors)
    side.latencies_ms = [latency_ms] * 100
    side.scores = {"ctr": [scores]}
    side.versions = {"ctr": {"1"}}
    return side


def test_identical_sides_pass() -> None:
    scores = np.random.default_rng(0).beta(2, 5, size=2000)
    report = judge(_side(scores), _side(scores.copy()), AnalysisConfig(), ["ctr"])
    assert report.verdict == PASS and report.score == 100.0
    assert json.loads(json.dumps(report.to_json()))["verdict"] == PASS
    assert "score[ctr]" in report.table()


def test_shifted_scores_fail_even_on_few_samples() -> None:
    rng = np.random.default_rng(1)
    cfg = AnalysisConfig(min_samples=20)
    base = rng.beta(2, 5, size=30)
    report = judge(_side(np.clip(base + 0.4, 0, 1)), _side(base), cfg, ["ctr"])
    metric = {m.name: m for m in report.metrics}["score[ctr]"]
    assert metric.verdict == FAIL and report.verdict == FAIL and report.score == 0.0


def test_too_few_samples_fail() -> None:
    report = judge(_side(np.full(5, 0.3)), _side(np.full(5, 0.3)), AnalysisConfig(), ["ctr"])
    assert {m.name: m for m in report.metrics}["score[ctr]"].verdict == FAIL


def test_garbage_scores_and_errors_fail() -> None:
    base = np.random.default_rng(2).beta(2, 5, size=500)
    nan_report = judge(_side(np.full(500, np.nan)), _side(base), AnalysisConfig(), ["ctr"])
    assert nan_report.verdict == FAIL
    err_report = judge(_side(base, errors=30), _side(base), AnalysisConfig(), ["ctr"])
    assert {m.name: m for m in err_report.metrics}["error_rate"].verdict == FAIL


def test_small_significant_shift_is_marginal_not_fail() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(0.5, 0.05, size=20000)
    canary = base + 0.004  # significant on 20k samples, tiny effect
    metric = {m.name: m for m in judge(_side(canary), _side(base), AnalysisConfig(), ["ctr"]).metrics}
    assert metric["score[ctr]"].verdict == MARGINAL


def test_latency_regression_lowers_score_without_critical_fail() -> None:
    scores = np.random.default_rng(4).beta(2, 5, size=500)
    report = judge(_side(scores, latency_ms=500.0), _side(scores, latency_ms=5.0), AnalysisConfig(), ["ctr"])
    by_name = {m.name: m for m in report.metrics}
    assert by_name["latency_p99_ms"].verdict == FAIL and not by_name["latency_p99_ms"].critical
    assert report.verdict != PASS and 0 < report.score < 90


_BEFORE = """# TYPE rootleaf_root_request_seconds histogram
rootleaf_root_request_seconds_bucket{le="0.01"} 10
rootleaf_root_request_seconds_bucket{le="0.1"} 10
rootleaf_root_request_seconds_bucket{le="+Inf"} 10
rootleaf_root_request_seconds_count 10
rootleaf_root_request_seconds_sum 0.05
# TYPE rootleaf_root_model_results_total counter
rootleaf_root_model_results_total{model="ctr",code="OK"} 10
"""
_AFTER = """# TYPE rootleaf_root_request_seconds histogram
rootleaf_root_request_seconds_bucket{le="0.01"} 10
rootleaf_root_request_seconds_bucket{le="0.1"} 110
rootleaf_root_request_seconds_bucket{le="+Inf"} 110
rootleaf_root_request_seconds_count 110
rootleaf_root_request_seconds_sum 5.05
# TYPE rootleaf_root_model_results_total counter
rootleaf_root_model_results_total{model="ctr",code="OK"} 100
rootleaf_root_model_results_total{model="ctr",code="INTERNAL"} 10
"""


def test_window_delta_and_quantile() -> None:
    window = delta(parse(_BEFORE), parse(_AFTER))
    assert window.total("rootleaf_root_model_results_total") == 100
    assert window.total("rootleaf_root_model_results_total", code="OK") == 90
    p50 = histogram_quantile(window, "rootleaf_root_request_seconds", 0.5)
    assert p50 is not None and abs(p50 - 0.055) < 1e-9  # all 100 new observations in (0.01, 0.1]
    assert histogram_quantile(parse(""), "rootleaf_root_request_seconds", 0.5) is None
