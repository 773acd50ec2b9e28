"""The analysis's trimming metrics on synthetic per-root windows, and the rollout-gap rule."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.canary import FAIL, PASS, SideObservation, judge
from deploy.fleet import Gap, find_gaps
from deploy.metrics_scrape import parse
from deploy.plan import AnalysisConfig
from deploy.trim_analysis import RootWindow, judge_trimming


def _root(target: str, untrimmed: int = 0, trimmed: int = 100, wire: float = 1000.0, healthy: int = 1,
          unserved: int = 0) -> RootWindow:
    window = parse(
        f'rootleaf_root_model_requests_total{{model="ctr",version="2",decision="latest"}} {trimmed}\n'
        f'rootleaf_root_model_requests_total{{model="ctr",version="2",decision="untrimmed"}} {untrimmed}\n'
        f'rootleaf_root_requests_total{{code="OK"}} {trimmed + untrimmed}\n'
        f'rootleaf_root_partition_bytes_total{{partition="ads",stage="wire"}} {wire * (trimmed + untrimmed)}\n'
    )
    end = parse(
        f'rootleaf_trimmer_bundle_healthy{{bundle="ads"}} {healthy}\n'
        f'rootleaf_root_unserved_versions{{partition="ads",model="ctr"}} {unserved}\n'
    )
    return RootWindow(target, window, end)


def _verdicts(canary: list[RootWindow], baseline: list[RootWindow]) -> dict[str, str]:
    return {m.name: m.verdict for m in judge_trimming(canary, baseline, AnalysisConfig(), ["ctr"], "ads")}


def test_every_canary_root_is_judged_against_the_best_baseline_root() -> None:
    baseline = [_root("b1"), _root("b2", untrimmed=100, trimmed=0)]  # one baseline root does not trim
    canary = [_root("c1"), _root("c2", untrimmed=50, trimmed=50)]
    verdicts = _verdicts(canary, baseline)
    assert verdicts["untrimmed_share[ctr]@c1"] == PASS
    assert verdicts["untrimmed_share[ctr]@c2"] == FAIL  # the other canary root passing does not hide it


@pytest.mark.parametrize(
    "canary, metric, critical",
    [
        (_root("c", untrimmed=100, trimmed=0), "untrimmed_share[ctr]@c", True),
        (_root("c", healthy=0), "bundle_healthy@c", True),
        (_root("c", wire=1600.0), "wire_bytes_per_request[ads]@c", False),
        (_root("c", unserved=1), "unserved_versions@c", False),
    ],
)
def test_each_trimming_metric_fails_alone(canary: RootWindow, metric: str, critical: bool) -> None:
    results = {m.name: m for m in judge_trimming([canary], [_root("b")], AnalysisConfig(), ["ctr"], "ads")}
    assert [name for name, m in results.items() if m.verdict == FAIL] == [metric]
    assert results[metric].critical is critical
    assert all(m.verdict == PASS for m in judge_trimming([_root("c")], [_root("b")], AnalysisConfig(), ["ctr"], "ads"))


def test_a_canary_that_stops_trimming_fails_the_whole_analysis() -> None:
    scores = np.random.default_rng(0).beta(2, 5, size=500)
    sides = []
    for root in (_root("c", untrimmed=100, trimmed=0), _root("b")):
        side = SideObservation(requests=100, model_results=100, latencies_ms=[5.0] * 100)
        side.scores, side.versions, side.roots = {"ctr": [scores]}, {"ctr": {"2"}}, [root]
        sides.append(side)
    report = judge(sides[0], sides[1], AnalysisConfig(), ["ctr"], bundle="ads")
    assert report.verdict == FAIL and report.score == 0.0
    failed = [m for m in report.metrics if m.verdict == FAIL]
    assert [m.name for m in failed] == ["untrimmed_share[ctr]@c"]
    assert "trimming is off for ctr on canary root c: 100% of its requests untrimmed vs 0%" in failed[0].detail


def test_gaps_name_each_missing_version_and_its_leaves() -> None:
    served = {"l1": {"ctr": {"1", "2"}, "other": {"9"}}, "l2": {"ctr": {"2"}, "cvr": {"3"}}}
    assert find_gaps({"ctr": ["2", "3"]}, served, {"ctr", "cvr"}) == [
        Gap("ctr", "1", ("l1",)), Gap("cvr", "3", ("l2",)),
    ]
    assert str(Gap("ctr", "1", ("l1", "l2"))) == "ctr/1 (served by l1, l2)"
    assert find_gaps({"ctr": ["1", "2", "3"], "cvr": ["3"]}, served, {"ctr", "cvr"}) == []
