"""``rootleaf demo``: the main job. A local cluster on a workload, driven by a client load,
and a table of what request-feature dedup, LZ4 and trimming each save.

Generates (or reuses, cached by the workload's hash) the demo data, models and bundles in
``--dir`` (default ``.rootleaf/demo``), starts the leaves and a root, and runs six modes of
the root's switches, restarting only the root between them: baseline (nothing), dedup,
dedup + LZ4, trim + dedup, all three with one call per model, and all three with one call
per partition (the default). Writes ``demo.json`` and ``demo.png`` next to the
assets, then stops the cluster. Runs on the main thread (see ``benchmarks.cluster``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from benchmarks.cluster import BenchOptions, Mode, parse_modes, run_cluster_bench
from benchmarks.cluster_report import print_table, write_chart
from harness.processes import ClusterError
from harness.workload import WorkloadError

DEMO_MODES: tuple[Mode, ...] = (
    Mode(False, False, False),
    Mode(False, False, True),
    Mode(False, True, True),
    Mode(True, False, True),
    Mode(True, True, True),
    Mode(True, True, True, True),
)


def summary(doc: Mapping[str, Any]) -> str:
    """Two sentences on the full mode against the baseline."""
    modes = {(m["trim"], m["lz4"], m["dedup"], m.get("part", False)): m for m in doc["modes"]}
    base = modes.get((False, False, False, False))
    full = modes.get((True, True, True, True)) or modes.get((True, True, True, False))
    if base is None or full is None:
        return ""
    saved = 1 - full["wire_bytes_per_request"] / base["wire_bytes_per_request"]
    return (
        f"\nWith {full['label']} the root sent {full['wire_bytes_per_request'] / 1024:,.0f} KB per request to the leaves "
        f"instead of {base['wire_bytes_per_request'] / 1024:,.0f} KB ({saved:.1%} less; "
        f"{full['wire_over_partition_floor']:.2f} x the partition floor: each partition's features once, "
        f"compressed; {full['wire_over_floor']:.2f} x the per-model floor).\n"
        f"Root CPU {base['root_cpu_ms_per_request']:.1f} -> {full['root_cpu_ms_per_request']:.1f} ms/request, "
        f"p99 {base['p99_ms']:.0f} -> {full['p99_ms']:.0f} ms at {doc['offered_rps']:g} req/s, "
        f"max throughput {base['max_rps']:.1f} -> {full['max_rps']:.1f} req/s; scores identical in every mode: "
        f"{all(m['scores_match_baseline'] for m in doc['modes'])}."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rootleaf demo", description="local cluster + load: what trimming saves")
    p.add_argument("--workload", default="w1", help="workload file or shipped name (default w1; 'ci' is tiny)")
    p.add_argument("--dir", type=Path, default=Path(".rootleaf/demo"), help="work directory (cached assets, results)")
    p.add_argument("--modes", type=parse_modes, default=list(DEMO_MODES),
                   help="all, or comma-separated labels (default: baseline,dedup,lz4+dedup,trim+dedup,trim+lz4+dedup,trim+lz4+dedup+part)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each load phase per mode")
    p.add_argument("--rate", type=float, default=None, help="open-loop req/s (default: half the baseline's max)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds per mode (medians reported)")
    p.add_argument("--verbose", action="store_true", help="log cluster start/stop details")
    p.add_argument("--image", default=None, metavar="TAG",
                   help="run the cluster as containers of this image (rootleaf image build; docs/image.md)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = BenchOptions(closed_s=args.seconds, open_s=args.seconds, rate=args.rate, pool_size=16,
                           probe_requests=2, closed_max_requests=1000, open_min_requests=30,
                           rounds=args.rounds, idle_s=min(2.0, args.seconds))
    print(f"rootleaf demo: workload {args.workload}, work dir {args.dir} (assets are generated once and cached)",
          file=sys.stderr)
    started = time.perf_counter()
    try:
        doc = run_cluster_bench(args.workload, args.dir, args.modes, options, image=args.image)
    except (ClusterError, WorkloadError) as exc:
        print(f"rootleaf demo: {exc}", file=sys.stderr)
        return 1
    print_table(doc)
    print(summary(doc))
    out_json, out_png = args.dir / "demo.json", args.dir / "demo.png"
    out_json.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    write_chart(doc, out_png)
    print(f"\nresults: {out_json}\nchart:   {out_png}\n(total {time.perf_counter() - started:.0f} s)")
    return 0 if all(m["errors"] == 0 and m["scores_match_baseline"] for m in doc["modes"]) else 1
