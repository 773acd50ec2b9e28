"""Reporting for the cluster benchmark and the demo: table, target checks, PNG chart.

Pure functions over the benchmark's JSON document (``benchmarks.cluster``); the chart uses
matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

from benchmarks.cluster_rounds import noise_flag, ratio_over_rounds

import sys


def _find(
    modes: Sequence[Mapping[str, Any]], trim: bool, lz4: bool, dedup: bool, part: bool = False
) -> Mapping[str, Any] | None:
    for mode in modes:
        if (mode["trim"], mode["lz4"], mode["dedup"], mode.get("part", False)) == (trim, lz4, dedup, part) and not mode.get(
            "auto", False
        ):
            return mode
    return None


def _full(modes: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Every switch on: partition calls when measured, else per-model calls."""
    return _find(modes, True, True, True, True) or _find(modes, True, True, True)


def _ratio(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, key_a: str, key_b: str | None = None) -> float | None:
    if a is None or b is None:
        return None
    denominator = b[key_b or key_a]
    if not denominator or math.isnan(denominator):
        return None
    return float(a[key_a]) / float(denominator)


# (name, limit, "<=" or ">=", value from one list of mode results)
TARGETS: tuple[tuple[str, float, str, Callable[[Sequence[Mapping[str, Any]]], float | None]], ...] = (
    ("full wire bytes / baseline", 0.15, "<=",
     lambda m: _ratio(_full(m), _find(m, False, False, False), "wire_bytes_per_request")),
    ("full wire bytes / per-model floor", 1.05, "<=",
     lambda m: _ratio(_full(m), _full(m), "wire_bytes_per_request", "floor_bytes_per_request")),
    ("full wire bytes / partition floor", 1.05, "<=",
     lambda m: _ratio(_full(m), _full(m), "wire_bytes_per_request", "partition_floor_bytes_per_request")),
    ("full root CPU / untrimmed lz4+dedup", 0.5, "<=",
     lambda m: _ratio(_full(m), _find(m, False, True, True), "root_cpu_ms_per_request")),
    ("full root CPU / untrimmed lz4+dedup+part", 0.5, "<=",
     lambda m: _ratio(_full(m), _find(m, False, True, True, True), "root_cpu_ms_per_request")),
    ("full root CPU / untrimmed lz4+dedup, closed loop", 0.5, "<=",
     lambda m: _ratio(_full(m), _find(m, False, True, True), "root_cpu_ms_per_request_closed")),
    ("full root CPU / untrimmed lz4+dedup, net of idle", 0.5, "<=",
     lambda m: _ratio(_full(m), _find(m, False, True, True), "root_cpu_ms_per_request_net")),
    ("full p99 / baseline p99 (fixed rate)", 0.7, "<=",
     lambda m: _ratio(_full(m), _find(m, False, False, False), "p99_ms")),
    ("full max throughput / baseline", 2.0, ">=",
     lambda m: _ratio(_full(m), _find(m, False, False, False), "max_rps")),
)


def evaluate_targets(
    modes: Sequence[Mapping[str, Any]],
    per_round: Sequence[Sequence[Mapping[str, Any]]] = (),
    *,
    max_rps_limit: float | None = None,
) -> list[dict[str, Any]]:
    """The targets on the modes present (a target whose modes are missing is left out).

    ``modes`` holds each mode's medians; ``per_round`` each round's runs, from which every
    ratio's spread is computed and compared with the difference it claims (``noisy``).
    ``max_rps_limit`` replaces the throughput target's limit (3x when a link binds).
    """
    out: list[dict[str, Any]] = []
    for name, limit, sign, pick in TARGETS:
        value = pick(modes)
        if value is None or math.isnan(value):
            continue
        if "throughput" in name and max_rps_limit is not None:
            limit = max_rps_limit
        met = value <= limit if sign == "<=" else value >= limit
        target = {"target": name, "value": value, "limit": limit, "sign": sign, "met": met, "unit": "ratio"}
        target.update(noise_flag(value, ratio_over_rounds(per_round, pick)))
        out.append(target)
    return out


def _kb(value: float) -> str:
    return f"{value / 1024:,.1f}"


def _pm(mode: Mapping[str, Any], key: str, fmt: str) -> str:
    """``median±spread`` of one figure (the spread only when there were several rounds)."""
    value = format(mode.get(key, math.nan), fmt)
    spread = (mode.get("spread") or {}).get(key)
    if spread is None or mode.get("runs", 1) < 2:
        return value
    return f"{value}\u00b1{format(spread, fmt)}"


def print_table(doc: Mapping[str, Any], out: TextIO = sys.stdout) -> None:
    modes = doc["modes"]
    base = _find(modes, False, False, False) or modes[0]
    base_bytes = base["wire_bytes_per_request"] or 1.0
    width = max(16, *(len(m["label"]) for m in modes))
    link = doc.get("link") or {}
    rounds = doc.get("rounds", 1)
    header = (
        f"{'mode':<{width}} {'wire KB/req':>11} {'vs base':>8} {'/mfloor':>7} {'/pfloor':>7} "
        f"{'root ms':>11} {'net ms':>11} {'us/(c*m)':>9} {'root ms@max':>11} {'leaf ms':>11} {'p50 ms':>8} {'p99 ms':>13} {'max rps':>13} "
        f"{'other cpu':>9} {'errors':>6} {'scores':>6}"
    )
    if link:
        header += f" {'leaf in MB/s':>12} {'root out MB/s':>13}"  # leaf: the busiest one
    spread_note = f"; median\u00b1spread (max-min) over {rounds} interleaved rounds" if rounds > 1 else ""
    print(
        f"\nworkload {doc['workload']}: {doc['candidates_per_request']} candidates x {len(doc['models'])} models "
        f"per request; open loop at {doc['offered_rps']:g} req/s; per-model floor "
        f"{_kb(modes[0]['floor_bytes_per_request'])} KB/req, partition floor "
        f"{_kb(modes[0].get('partition_floor_bytes_per_request', 0.0))} KB/req{spread_note}",
        file=out,
    )
    if link:
        print(f"link: {link.get('description', '')}", file=out)
    print(header, file=out)
    print("-" * len(header), file=out)
    for m in modes:
        saving = 1.0 - m["wire_bytes_per_request"] / base_bytes
        line = (
            f"{m['label']:<{width}} {_kb(m['wire_bytes_per_request']):>11} {-saving * 100:>+7.1f}% "
            f"{m['wire_over_floor']:>7.2f} {m.get('wire_over_partition_floor', math.nan):>7.2f} "
            f"{_pm(m, 'root_cpu_ms_per_request', '.2f'):>11} {_pm(m, 'root_cpu_ms_per_request_net', '.2f'):>11} "
            f"{m.get('root_cpu_us_per_candidate_model', math.nan):>9.2f} "
            f"{_pm(m, 'root_cpu_ms_per_request_closed', '.2f'):>11} "
            f"{_pm(m, 'leaf_cpu_ms_per_request', '.2f'):>11} {m['p50_ms']:>8.1f} {_pm(m, 'p99_ms', '.1f'):>13} "
            f"{_pm(m, 'max_rps', '.1f'):>13} {m.get('outside_cpu_cores', math.nan):>9.2f} "
            f"{m['errors']:>6} {'same' if m['scores_match_baseline'] else 'DIFF':>6}"
        )
        if link:
            line += f" {m.get('leaf_ingress_mb_s', math.nan):>12.1f} {m.get('root_egress_mb_s', math.nan):>13.1f}"
        print(line, file=out)
    print("(leaf in MB/s: the busiest leaf's ingress at the open-loop rate; root out MB/s: the root's egress)\n"
          if link else "", end="", file=out)
    print("(root ms: root CPU per request at the open-loop rate; net ms: the same less the root's CPU with no load\n"
          " (health and version rounds) over as long; root ms@max: in the closed loop; us/(c*m): root CPU\n"
          " microseconds per candidate x model at the open-loop rate; other cpu: cores busy outside the cluster and\n"
          " the load generator during the load phases)", file=out)
    targets = doc.get("targets") or []
    if targets:
        print("\ntargets:", file=out)
        for t in targets:
            noise = ""
            if not math.isnan(t.get("spread", math.nan)):
                noise = f"  spread {t['spread']:.3f} over rounds" + ("  NOISY: spread > difference claimed" if t["noisy"] else "")
            print(f"  {'met ' if t['met'] else 'MISS'}  {t['target']:<42} {t['value']:.3f} ({t['sign']} {t['limit']}){noise}",
                  file=out)


def write_chart(doc: Mapping[str, Any], path: Path) -> None:
    """Bars of wire bytes per request and p99 latency per mode, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = doc["modes"]
    labels = [m["label"].replace("+", "\n+") for m in modes]
    mb = [m["wire_bytes_per_request"] / 2**20 for m in modes]
    p99 = [m["p99_ms"] for m in modes]
    colours = ["#999999" if not (m["trim"] or m["lz4"] or m["dedup"]) else "#2b7bba" for m in modes]
    colours = ["#2a9d55" if m["trim"] and m["lz4"] and m["dedup"] else c for m, c in zip(modes, colours)]
    colours = ["#1b5e20" if m.get("part") and m["trim"] else c for m, c in zip(modes, colours)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 1.3 * len(modes)), 7.5), sharex=True)
    bars = top.bar(labels, mb, color=colours)
    top.axhline(modes[0]["floor_bytes_per_request"] / 2**20, color="#d62728", linestyle="--", linewidth=1,
                label="per-model floor (exact features, min(raw, LZ4))")
    if modes[0].get("partition_floor_bytes_per_request"):
        top.axhline(modes[0]["partition_floor_bytes_per_request"] / 2**20, color="#9467bd", linestyle=":",
                    linewidth=1, label="partition floor (each feature once per partition)")
    top.set_ylabel("root -> leaf MiB per request")
    top.legend(loc="upper right", fontsize=8)
    top.bar_label(bars, labels=[f"{v:,.2f}" if v < 10 else f"{v:,.1f}" for v in mb], fontsize=8)
    bars = bottom.bar(labels, p99, color=colours)
    bottom.set_ylabel(f"p99 ms at {doc['offered_rps']:g} req/s")
    bottom.bar_label(bars, labels=[f"{v:.0f}" for v in p99], fontsize=8)
    fig.suptitle(
        f"rootleaf {doc['workload']}: {doc['candidates_per_request']} candidates x {len(doc['models'])} models per request"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
