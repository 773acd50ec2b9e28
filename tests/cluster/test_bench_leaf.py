"""A tiny ``rootleaf bench leaf`` run: both cases, all three RPCs (Leaf/Score, Leaf/ScorePartition, OIP ModelInfer), no errors, shares in [0, 1], a
factor over the floor, a gRPC floor (unary call and stream message) measured for each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.leaf import main


@pytest.mark.cluster
def test_tiny_leaf_bench_runs_both_cases_and_rpcs(tmp_path: Path) -> None:
    out = tmp_path / "leaf.json"
    code = main([
        "--cases", "sparse,dense", "--rpcs", "score,partition,oip", "--inputs", "6", "--candidates", "8",
        "--dense-shape", "16,64", "--concurrency", "2", "--duration", "0.3", "--modes", "on", "--floor-duration", "0.3",
        "--json", str(out),
    ])
    rows = json.loads(out.read_text())
    assert code == 0
    assert {(r["case"], r["rpc"]) for r in rows} == {
        (case, rpc) for case in ("sparse", "dense") for rpc in ("score", "partition", "oip")
    }
    for r in rows:
        assert r["errors"] == 0 and r["requests"] > 0
        assert r["forward_cpu_s"] > 0 and 0.0 <= r["outside_forward"] <= 1.0
        assert r["floor_cpu_ms"] > 0 and r["outside_above_floor"] <= r["outside_forward"]
        assert r["stream_floor_cpu_ms"] > 0
        assert 0.0 < r["floor_share"] < 1.0 and 0.0 < r["stream_floor_share"] < 1.0
        assert math.isfinite(r["floor_factor"]) and r["floor_factor"] > 0
