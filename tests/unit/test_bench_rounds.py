"""Interleaved rounds, medians, spreads and noise flags; the two byte floors."""

from __future__ import annotations

import math

import pytest

from benchmarks.cluster_report import evaluate_targets
from benchmarks.cluster_rounds import aggregate, noise_flag, round_orders
from benchmarks.floors import floors_of_request


def test_round_orders_alternate_direction() -> None:
    assert round_orders(2, 2) == [[0, 1], [1, 0]]
    assert round_orders(3, 3) == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]
    with pytest.raises(ValueError):
        round_orders(0, 2)


def test_aggregate_medians_spreads_and_sums() -> None:
    runs = [
        {"label": "x", "p99_ms": 10.0, "max_rps": 5.0, "errors": 1, "scores_match_baseline": True,
         "error_samples": ["a"], "wire_bytes_per_partition": {"p": 2.0}},
        {"label": "x", "p99_ms": 30.0, "max_rps": 7.0, "errors": 0, "scores_match_baseline": False,
         "error_samples": [], "wire_bytes_per_partition": {"p": 4.0}},
        {"label": "x", "p99_ms": 20.0, "max_rps": 6.0, "errors": 2, "scores_match_baseline": True,
         "error_samples": ["b"], "wire_bytes_per_partition": {"p": 3.0}},
    ]
    out = aggregate(runs)
    assert out["p99_ms"] == 20.0 and out["max_rps"] == 6.0
    assert out["spread"]["p99_ms"] == 20.0 and out["spread"]["max_rps"] == 2.0
    assert out["errors"] == 3 and out["error_samples"] == ["a", "b"]
    assert out["scores_match_baseline"] is False
    assert out["wire_bytes_per_partition"] == {"p": 3.0}
    assert out["runs"] == 3 and [r["p99_ms"] for r in out["rounds"]] == [10.0, 30.0, 20.0]


def test_noise_flag_compares_spread_with_claimed_difference() -> None:
    assert noise_flag(0.5, [0.45, 0.55])["noisy"] is False
    assert noise_flag(0.9, [0.7, 1.1])["noisy"] is True
    assert math.isnan(noise_flag(0.9, [0.9])["spread"])


def _mode(trim: bool, lz4: bool, dedup: bool, p99: float, wire: float = 100.0) -> dict[str, object]:
    return {"trim": trim, "lz4": lz4, "dedup": dedup, "p99_ms": p99, "wire_bytes_per_request": wire,
            "max_rps": 1.0, "root_cpu_ms_per_request": 1.0, "floor_bytes_per_request": 50.0,
            "partition_floor_bytes_per_request": 40.0}


def test_targets_use_per_round_ratios() -> None:
    rounds = [
        [_mode(False, False, False, 100.0), _mode(True, True, True, 50.0, 42.0)],
        [_mode(False, False, False, 100.0), _mode(True, True, True, 90.0, 42.0)],
    ]
    medians = [_mode(False, False, False, 100.0), _mode(True, True, True, 70.0, 42.0)]
    targets = {t["target"]: t for t in evaluate_targets(medians, rounds)}
    p99 = targets["full p99 / baseline p99 (fixed rate)"]
    assert p99["value"] == pytest.approx(0.7) and p99["per_round"] == pytest.approx([0.5, 0.9])
    assert p99["noisy"] is True  # spread 0.4 > claimed difference 0.3
    assert targets["full wire bytes / partition floor"]["value"] == pytest.approx(42.0 / 40.0)
    assert targets["full wire bytes / partition floor"]["noisy"] is False


def test_partition_floor_counts_shared_features_once() -> None:
    sizes = {"a": 10, "b": 20, "c": 5}
    inputs = {"m1": ["a", "b"], "m2": ["a", "c"], "m3": ["a"]}
    floors = floors_of_request(sizes, inputs, {"p": ["m1", "m2"], "q": ["m3"]})
    assert floors.per_model == 10 + 20 + 10 + 5 + 10
    assert floors.per_partition == (10 + 20 + 5) + 10
