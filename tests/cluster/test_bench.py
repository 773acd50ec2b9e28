"""A CI-sized ``rootleaf bench`` run: the JSON's invariants, no timing asserts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.cluster import ALL_MODES, main


@pytest.mark.cluster
def test_ci_bench_json_invariants(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    code = main([
        "--workload", "ci", "--dir", str(tmp_path / "work"), "--json", str(out), "--chart", str(tmp_path / "c.png"),
        "--closed-s", "0.5", "--open-s", "0.5", "--rate", "20", "--pool-size", "6", "--probe-requests", "2",
        "--concurrency", "4", "--open-min-requests", "10", "--rounds", "2", "--idle-s", "0.3", "--no-progress",
    ])
    doc = json.loads(out.read_text())
    assert code == 0
    assert doc["workload"] == "ci" and doc["candidates_per_request"] == 16
    modes = doc["modes"]
    labels = [m.label for m in ALL_MODES]
    assert doc["rounds"] == 2 and doc["round_orders"] == [labels, labels[::-1]]
    assert [m["label"] for m in modes] == labels
    required = {
        "wire_bytes_per_request", "floor_bytes_per_request", "leaf_received_bytes_per_request",
        "root_cpu_ms_per_request", "leaf_cpu_ms_per_request", "offered_rps", "p50_ms", "p99_ms", "max_rps",
        "errors", "scores_match_baseline", "partition_floor_bytes_per_request", "wire_over_partition_floor",
        "root_cpu_us_per_candidate_model", "outside_cpu_cores", "leaf_ingress_mb_s", "root_egress_mb_s",
        "root_cpu_ms_per_request_net", "root_idle_cpu_ms_per_s",
    }
    by_mode = {(m["trim"], m["lz4"], m["dedup"]): m for m in modes if not m["part"]}
    for m in modes:
        assert required <= set(m), sorted(required - set(m))
        assert m["errors"] == 0, m["error_samples"]
        assert m["scores_match_baseline"] and m["scores_compared"] > 0
        assert m["offered_rps"] == 20
        assert 0 < m["partition_floor_bytes_per_request"] <= m["floor_bytes_per_request"]
        assert m["partition_floor_bytes_per_request"] <= m["wire_bytes_per_request"]
        assert m["runs"] == 2 and len(m["rounds"]) == 2 and m["spread"]["p99_ms"] >= 0
        assert m["outside_cpu_cores"] >= 0 and m["root_cpu_us_per_candidate_model"] > 0
        assert m["root_idle_cpu_ms_per_s"] >= 0
        # per round the net figure is the gross one less a non-negative idle share
        assert all(0 <= r["root_cpu_ms_per_request_net"] <= r["root_cpu_ms_per_request"] for r in m["rounds"])
        # what the root counted as sent is what the leaves counted as received
        assert m["leaf_received_bytes_per_request"] == pytest.approx(m["wire_bytes_per_request"], rel=1e-9)
        assert sum(m["wire_bytes_per_partition"].values()) == pytest.approx(m["wire_bytes_per_request"])
        assert m["max_rps"] > 0 and m["p99_ms"] >= m["p50_ms"] > 0
    for lz4 in (False, True):
        for dedup in (False, True):
            trimmed, untrimmed = by_mode[(True, lz4, dedup)], by_mode[(False, lz4, dedup)]
            assert trimmed["wire_bytes_per_request"] < untrimmed["wire_bytes_per_request"]
            assert trimmed["trimmed_bytes_per_request"] < untrimmed["trimmed_bytes_per_request"]
    full, baseline = by_mode[(True, True, True)], by_mode[(False, False, False)]
    assert full["wire_bytes_per_request"] < 0.5 * baseline["wire_bytes_per_request"]
    # one call per partition: each feature once per partition, so fewer bytes than per-model calls
    parted = {m["label"]: m for m in modes if m["part"]}
    assert parted["trim+lz4+dedup+part"]["wire_bytes_per_request"] < full["wire_bytes_per_request"]
    assert parted["lz4+dedup+part"]["wire_bytes_per_request"] < by_mode[(False, True, True)]["wire_bytes_per_request"]
    targets = {t["target"]: t for t in doc["targets"]}
    assert set(targets) >= {
        "full wire bytes / baseline", "full wire bytes / per-model floor", "full wire bytes / partition floor",
    }
    assert all(len(t["per_round"]) == 2 and isinstance(t["noisy"], bool) for t in targets.values())
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
