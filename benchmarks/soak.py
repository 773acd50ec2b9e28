"""``rootleaf soak --minutes M [--json OUT] [--workload W]``: the cluster under load and faults.

Starts a ``LocalCluster`` (ci workload by default), drives it with a ``LoadProcess`` (a
closed-loop client in its own process) for M minutes while the fault schedule runs: a leaf SIGKILLed and
restarted on its port, an allowlist reload storm (10% of rewrites corrupt or half-written),
a slow-leaf phase (the leaf restarted with an injected delay longer than the deadline, then
restored), with steady gaps between them. Afterwards it prints a table (requests sent,
succeeded, failed by code, reloads, corrupt reloads, leaf kills, lost) and checks, from the
leaves' request records, that every leaf request carried exactly the features of an
allowlist that was valid at some point. Exit code 0 only when nothing was lost, no
allowlist was violated and the root never died.

The calling thread owns the cluster, the bundle files and the fault schedule; the load's
state lives in its own process.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.faults import AllowlistStorm, read_records
from benchmarks.soak_load import LoadProcess
from deploy.local_cluster import ClusterError, LocalCluster

log = logging.getLogger("rootleaf.soak")

FAULTS = ("leaf_kill", "storm", "slow_leaf")


@dataclass(slots=True)
class FaultLog:
    """What the schedule did (written by the fault thread only)."""

    leaf_kills: int = 0
    slow_phases: int = 0
    storms: int = 0
    events: list[str] = field(default_factory=list)

    def note(self, started: float, text: str) -> None:
        self.events.append(f"{time.monotonic() - started:7.1f}s {text}")
        log.info("fault: %s", text)


@dataclass(frozen=True, slots=True)
class SoakOptions:
    """One soak run."""

    minutes: float
    """Load duration."""
    concurrency: int = 8
    """Load workers (calls in flight at most)."""
    deadline_ms: int = 1000
    """Deadline of every Score call."""
    storm_rewrites: int = 100
    """Bundle rewrites per storm."""
    down_s: float = 2.0
    """How long a killed leaf stays down."""
    slow_s: float = 3.0
    """How long a slow-leaf phase lasts."""
    gap_s: float = 3.0
    """Steady load between faults."""
    seed: int = 0
    rate: float = 100.0
    """Offered requests per second (0 = closed loop, as fast as answers come back)."""

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes!r}")
        for name in ("concurrency", "deadline_ms", "storm_rewrites"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("down_s", "slow_s", "gap_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


def _run_faults(cluster: LocalCluster, storm: AllowlistStorm, opts: SoakOptions, until: float) -> FaultLog:
    """The fault schedule: cycles through FAULTS with steady gaps until ``until`` (monotonic),
    each fault at least once; the fault in progress at that time finishes, so every leaf is
    up when it returns."""
    faults = FaultLog()
    rng = random.Random(opts.seed)
    partitions = [leaf.partition for leaf in cluster.leaves()]
    started = time.monotonic()
    delay_ms = str(2 * opts.deadline_ms)

    def pause(seconds: float) -> None:  # pacing the schedule, not synchronisation
        time.sleep(max(0.0, min(seconds, until - time.monotonic())))

    for i in range(1_000_000):
        pause(opts.gap_s)
        if time.monotonic() >= until and i >= len(FAULTS):  # every fault runs at least once
            break
        fault = FAULTS[i % len(FAULTS)]
        partition = rng.choice(partitions)
        if fault == "leaf_kill":
            faults.note(started, f"SIGKILL leaf {partition}")
            cluster.kill_leaf(partition)
            faults.leaf_kills += 1
            time.sleep(opts.down_s)  # the partition stays down this long
            cluster.restart_leaf(partition)
            faults.note(started, f"leaf {partition} restarted on its port")
        elif fault == "storm":
            faults.note(started, f"reload storm: {opts.storm_rewrites} rewrites")
            storm.storm(opts.storm_rewrites, corrupt_fraction=0.1)
            faults.storms += 1
        else:
            faults.note(started, f"leaf {partition} slow ({delay_ms} ms per request)")
            cluster.restart_leaf(partition, extra_args=["--inject-delay-ms", delay_ms])
            faults.slow_phases += 1
            pause(opts.slow_s)
            cluster.restart_leaf(partition)
            faults.note(started, f"leaf {partition} fast again")
    return faults


def run_soak(workload: str, directory: Path, opts: SoakOptions) -> dict[str, Any]:
    """Run one soak; returns the report document (see ``--json``)."""
    records = directory / "leaf-requests.jsonl"
    records.unlink(missing_ok=True)
    cluster = LocalCluster(
        workload, directory, leaf_args=("--torch-threads", "1", "--record-requests", str(records))
    )
    with cluster:
        assert cluster.assets is not None
        catalog = json.loads(Path(cluster.assets.catalog).read_text(encoding="utf-8"))
        names = [f["name"] for f in catalog["features"]]
        storm = AllowlistStorm({b: Path(p) for b, p in cluster.root().bundle_files.items()}, names, seed=opts.seed)
        root_pid = cluster.root().pid
        info = cluster.assets.workload.info
        models = [m for ms in cluster.assets.partitions.values() for m in ms]
        started = time.monotonic()
        with LoadProcess(
            cluster.root().target, directory / "load-outcomes.jsonl", users=info.users, items=info.items,
            candidates=info.candidates_per_request, concurrency=opts.concurrency, deadline_ms=opts.deadline_ms,
            models=models, seed=opts.seed, rate=opts.rate,
        ) as load:
            try:
                faults = _run_faults(cluster, storm, opts, started + opts.minutes * 60)
            finally:
                storm.restore()
            stats = load.stop()
        elapsed = time.monotonic() - started
        dead = [d for d in cluster.check_alive() if "root" in d]
        root_alive = not dead and cluster.root().pid == root_pid
    leaf_records = read_records(records)
    violations = storm.check_records(leaf_records)
    return {
        "sent": stats.sent,
        "succeeded": stats.succeeded,
        "failed_by_code": dict(sorted(stats.failed_by_code.items())),
        "reloads": storm.counts.reloads,
        "corrupt_reloads": storm.counts.corrupt_reloads,
        "leaf_kills": faults.leaf_kills,
        "lost": stats.lost,
        "slow_phases": faults.slow_phases,
        "storms": faults.storms,
        "model_results": dict(sorted(stats.model_results.items())),
        "leaf_requests_recorded": len(leaf_records),
        "allowlist_violations": len(violations),
        "allowlist_violation_examples": violations[:5],
        "root_alive": root_alive,
        "seconds": round(elapsed, 1),
        "requests_per_second": round(stats.sent / elapsed, 1) if elapsed else 0.0,
        "events": faults.events,
    }


def format_table(report: dict[str, Any]) -> str:
    rows: list[tuple[str, Any]] = [
        ("requests sent", report["sent"]),
        ("succeeded", report["succeeded"]),
        *((f"failed {code}", n) for code, n in report["failed_by_code"].items()),
        ("reloads", report["reloads"]),
        ("corrupt reloads", report["corrupt_reloads"]),
        ("leaf kills", report["leaf_kills"]),
        ("slow-leaf phases", report["slow_phases"]),
        ("lost", report["lost"]),
        ("leaf requests checked", report["leaf_requests_recorded"]),
        ("allowlist violations", report["allowlist_violations"]),
        ("root stayed up", "yes" if report["root_alive"] else "NO"),
        ("seconds", report["seconds"]),
        ("requests/s", report["requests_per_second"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:>10}" for name, value in rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rootleaf soak", description="local cluster under load with injected faults")
    p.add_argument("--minutes", type=float, required=True, help="how long the load runs")
    p.add_argument("--json", type=Path, default=None, help="write the report here as JSON")
    p.add_argument("--workload", default="ci", help="workload file or shipped name (default ci)")
    p.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one, removed)")
    p.add_argument("--concurrency", type=int, default=8, help="load workers")
    p.add_argument("--rate", type=float, default=100.0, help="offered requests/s (0 = closed loop)")
    p.add_argument("--deadline-ms", type=int, default=1000, help="deadline of every call")
    p.add_argument("--storm-rewrites", type=int, default=100, help="bundle rewrites per storm")
    p.add_argument("--gap-s", type=float, default=3.0, help="steady load between faults")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        opts = SoakOptions(args.minutes, args.concurrency, args.deadline_ms, args.storm_rewrites,
                           gap_s=args.gap_s, seed=args.seed, rate=args.rate)
    except ValueError as exc:
        print(f"rootleaf soak: {exc}", file=sys.stderr)
        return 2
    directory = args.dir or Path(tempfile.mkdtemp(prefix="rootleaf-soak-"))
    try:
        report = run_soak(args.workload, directory.resolve(), opts)
    except ClusterError as exc:
        print(f"rootleaf soak: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    print(format_table(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    ok = report["lost"] == 0 and report["allowlist_violations"] == 0 and report["root_alive"]
    return 0 if ok else 1
