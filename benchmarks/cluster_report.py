"""Reporting for the cluster benchmark and the demo: table, target checks, PNG chart.

Pure functions over the benchmark's JSON document (``benchmarks.cluster``); the chart uses
matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

import sys


def _find(modes: Sequence[Mapping[str, Any]], trim: bool, lz4: bool, dedup: bool) -> Mapping[str, Any] | None:
    for mode in modes:
        if (mode["trim"], mode["lz4"], mode["dedup"]) == (trim, lz4, dedup):
            return mode
    return None


def _target(name: str, value: float, limit: float, ok: bool, unit: str) -> dict[str, Any]:
    return {"target": name, "value": value, "limit": limit, "met": ok, "unit": unit}


def evaluate_targets(modes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets on the modes present (a target whose modes are missing is left out)."""
    base = _find(modes, False, False, False)
    full = _find(modes, True, True, True)
    lz4_untrimmed = _find(modes, False, True, True)
    out: list[dict[str, Any]] = []
    if full is None:
        return out
    if base is not None and base["wire_bytes_per_request"] > 0:
        ratio = full["wire_bytes_per_request"] / base["wire_bytes_per_request"]
        out.append(_target("full wire bytes / baseline", ratio, 0.15, ratio <= 0.15, "ratio"))
    if full["floor_bytes_per_request"] > 0:
        ratio = full["wire_bytes_per_request"] / full["floor_bytes_per_request"]
        out.append(_target("full wire bytes / floor", ratio, 1.05, ratio <= 1.05, "ratio"))
    if lz4_untrimmed is not None and lz4_untrimmed["root_cpu_ms_per_request"] > 0:
        ratio = full["root_cpu_ms_per_request"] / lz4_untrimmed["root_cpu_ms_per_request"]
        out.append(_target("full root CPU / untrimmed lz4+dedup", ratio, 0.5, ratio <= 0.5, "ratio"))
    if base is not None and base["p99_ms"] > 0 and not math.isnan(base["p99_ms"]):
        ratio = full["p99_ms"] / base["p99_ms"]
        out.append(_target("full p99 / baseline p99 (fixed rate)", ratio, 0.7, ratio <= 0.7, "ratio"))
    if base is not None and base["max_rps"] > 0:
        ratio = full["max_rps"] / base["max_rps"]
        out.append(_target("full max throughput / baseline", ratio, 2.0, ratio >= 2.0, "ratio"))
    return out


def _kb(value: float) -> str:
    return f"{value / 1024:,.1f}"


def print_table(doc: Mapping[str, Any], out: TextIO = sys.stdout) -> None:
    modes = doc["modes"]
    base = _find(modes, False, False, False) or modes[0]
    base_bytes = base["wire_bytes_per_request"] or 1.0
    width = max(16, *(len(m["label"]) for m in modes))
    header = (
        f"{'mode':<{width}} {'wire KB/req':>12} {'leaf KB/req':>12} {'vs base':>8} {'/floor':>7} "
        f"{'root ms':>8} {'leaf ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'max rps':>8} {'errors':>6} {'scores':>7}"
    )
    print(
        f"\nworkload {doc['workload']}: {doc['candidates_per_request']} candidates x {len(doc['models'])} models "
        f"per request; open loop at {doc['offered_rps']:g} req/s; floor {_kb(modes[0]['floor_bytes_per_request'])} KB/req",
        file=out,
    )
    print(header, file=out)
    print("-" * len(header), file=out)
    for m in modes:
        saving = 1.0 - m["wire_bytes_per_request"] / base_bytes
        print(
            f"{m['label']:<{width}} {_kb(m['wire_bytes_per_request']):>12} {_kb(m['leaf_received_bytes_per_request']):>12} "
            f"{-saving * 100:>+7.1f}% {m['wire_over_floor']:>7.2f} {m['root_cpu_ms_per_request']:>8.2f} "
            f"{m['leaf_cpu_ms_per_request']:>8.2f} {m['p50_ms']:>8.1f} {m['p99_ms']:>8.1f} {m['max_rps']:>8.1f} "
            f"{m['errors']:>6} {'same' if m['scores_match_baseline'] else 'DIFF':>7}",
            file=out,
        )
    targets = doc.get("targets") or []
    if targets:
        print("\ntargets (issue 7, defined on w1):", file=out)
        for t in targets:
            sign = ">=" if "throughput" in t["target"] else "<="
            print(f"  {'met ' if t['met'] else 'MISS'}  {t['target']:<42} {t['value']:.3f} ({sign} {t['limit']})", file=out)


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
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 1.3 * len(modes)), 7.5), sharex=True)
    bars = top.bar(labels, mb, color=colours)
    top.axhline(modes[0]["floor_bytes_per_request"] / 2**20, color="#d62728", linestyle="--", linewidth=1,
                label="floor (exact features, min(raw, LZ4))")
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
