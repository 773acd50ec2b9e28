"""``rootleaf bench --tracing off,1``: one run per tracing setting on the same leaves and
pool, spans exported to the benchmark's OTLP sink only when tracing is on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.cluster import main
from benchmarks.tracing_bench import hooks_cost, parse_tracing


def test_hooks_cost_runs_the_off_hooks() -> None:
    assert set(hooks_cost(repeat=50)) == {"root_us", "leaf_us"}


def test_tracing_settings_parse() -> None:
    assert parse_tracing("off,0.01,1") == [None, 0.01, 1.0]
    with pytest.raises(Exception, match="ratio"):
        parse_tracing("2")


@pytest.mark.cluster
def test_bench_compares_tracing_settings(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    code = main([
        "--workload", "ci", "--dir", str(tmp_path / "work"), "--json", str(out), "--modes", "trim+lz4+dedup",
        "--tracing", "off,1", "--closed-s", "0.5", "--open-s", "0.5", "--rate", "20", "--pool-size", "6",
        "--probe-requests", "2", "--concurrency", "4", "--open-min-requests", "10", "--rounds", "1",
        "--idle-s", "0.3", "--no-progress",
    ])
    doc = json.loads(out.read_text())
    assert code == 0
    assert [m["variant"] for m in doc["modes"]] == ["tracing=off", "tracing=1"]
    assert all(m["errors"] == 0 and m["scores_match_baseline"] for m in doc["modes"])
    assert doc["tracing"] == ["off", 1.0]
    # Every request of the traced run exports its spans (about 14 per request on ci's two
    # partitions); the untraced run exports none, so the sink saw at least the traced run's.
    traced = doc["modes"][1]["requests"]
    assert doc["tracing_spans_exported"] >= 10 * traced
