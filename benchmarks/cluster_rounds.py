"""Interleaved rounds for the cluster benchmark: order of modes, medians, spreads, noise flags.

One run of a mode is noisy (a busy neighbour, a warm-up, the order of modes); the benchmark
runs every mode once per round, in forward order in even rounds and reverse order in odd
ones (A B C, C B A, ...: ABBA for two modes), and reports per figure the median over rounds
and the spread (max - min). A target's ratio is computed per round (both modes measured
in that round) and flagged noisy when its spread is larger than the difference it claims
(``|ratio - 1|``). Pure functions over the per-run dictionaries of ``benchmarks.cluster``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

# Figures whose spread over rounds is reported beside the median.
SPREAD_FIGURES: tuple[str, ...] = (
    "wire_bytes_per_request",
    "root_cpu_ms_per_request",
    "leaf_cpu_ms_per_request",
    "root_cpu_us_per_candidate_model",
    "root_cpu_ms_per_request_closed",
    "root_cpu_ms_per_request_net",
    "root_idle_cpu_ms_per_s",
    "p50_ms",
    "p99_ms",
    "max_rps",
    "outside_cpu_cores",
    "leaf_ingress_mb_s",
    "root_egress_mb_s",
)


def round_orders(count: int, rounds: int) -> list[list[int]]:
    """Indices of ``count`` modes per round: forward in even rounds, reversed in odd ones."""
    if count < 1 or rounds < 1:
        raise ValueError(f"need at least one mode and one round, got {count} modes, {rounds} rounds")
    forward = list(range(count))
    return [forward if r % 2 == 0 else forward[::-1] for r in range(rounds)]


def _median(values: Sequence[float]) -> float:
    finite = sorted(v for v in values if not math.isnan(v))
    if not finite:
        return math.nan
    mid = len(finite) // 2
    return finite[mid] if len(finite) % 2 else (finite[mid - 1] + finite[mid]) / 2


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One mode's figures over its runs: numbers -> median, booleans -> all, errors summed,
    dictionaries of numbers -> per-key median; ``spread`` holds max - min of
    ``SPREAD_FIGURES`` and ``rounds`` those figures per run."""
    if not runs:
        raise ValueError("no runs to aggregate")
    first = runs[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        values = [run[key] for run in runs]
        if key in ("errors", "requests"):
            out[key] = sum(values)
        elif key == "error_samples":
            out[key] = [s for v in values for s in v][:5]
        elif isinstance(value, bool):
            out[key] = all(values)
        elif _is_number(value):
            out[key] = _median([float(v) for v in values])
        elif isinstance(value, Mapping) and all(_is_number(v) for v in value.values()):
            out[key] = {k: _median([float(v.get(k, math.nan)) for v in values]) for k in value}
        else:
            out[key] = value
    out["spread"] = {
        key: max(run[key] for run in runs) - min(run[key] for run in runs)
        for key in SPREAD_FIGURES
        if key in first
    }
    out["rounds"] = [{key: run[key] for key in SPREAD_FIGURES if key in run} for run in runs]
    out["runs"] = len(runs)
    return out


def ratio_over_rounds(
    per_round: Sequence[Sequence[Mapping[str, Any]]],
    pick: Callable[[Sequence[Mapping[str, Any]]], float | None],
) -> list[float]:
    """``pick`` applied to each round's list of mode runs (None results are skipped)."""
    out = []
    for modes in per_round:
        value = pick(modes)
        if value is not None and not math.isnan(value):
            out.append(value)
    return out


def noise_flag(value: float, per_round: Sequence[float]) -> dict[str, Any]:
    """Spread of a ratio over rounds and whether it exceeds the difference claimed."""
    if len(per_round) < 2:
        return {"per_round": list(per_round), "spread": math.nan, "noisy": False}
    spread = max(per_round) - min(per_round)
    return {"per_round": list(per_round), "spread": spread, "noisy": spread > abs(value - 1.0)}
