"""``rootleaf soak --minutes M [--json OUT] [--workload W]``: the cluster under load and faults.

Starts a ``LocalCluster`` (ci workload by default), drives it with a ``LoadProcess`` (a
closed-loop client in its own process) for M minutes while the fault schedule runs: a leaf SIGKILLed and
restarted on its port, an allowlist reload storm (10% of rewrites corrupt or half-written),
a slow-leaf phase (the leaf restarted with an injected delay longer than the deadline, then
restored), a model version rollout and rollback, a frozen leaf (SIGSTOP: a hung process,
not a dead one, then SIGCONT), with steady gaps between them (``--faults`` picks some). Each
partition runs ``--replicas`` leaf processes (2 by default) and leaf faults hit one replica
at a time. Afterwards it prints a table (requests sent, succeeded, failed by code, reloads,
corrupt reloads, leaf kills, lost), the same per fault kind (success rate, failures by code,
p50/p99, share of other partitions' results served), and checks, from the leaves' request
records, that every leaf request carried exactly the features of an allowlist that was
valid at some point. Exit code 0 only when the availability targets are met
(``harness.soak_report.targets``). ``--image TAG`` runs the same against a cluster of
containers of that image (the leaves write their records into ``<dir>/records/``, the one
directory they share read-write; docs/image.md).

The calling thread owns the cluster, the bundle files and the fault schedule; the load's
state lives in its own process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from deploy.engine import Engine
from harness.faults import AllowlistStorm, read_records
from harness.soak_load import LoadProcess
from harness.soak_report import Phase, by_fault, targets
from contract.versions import latest_version
from harness.local_cluster import LocalCluster
from harness.processes import ClusterError
from protos.rootleaf.v1 import leaf_pb2, leaf_pb2_grpc, root_pb2, root_pb2_grpc
from transport.tls import TlsConfig, sync_channel

log = logging.getLogger("rootleaf.soak")

FAULTS = ("leaf_kill", "storm", "slow_leaf", "rollout", "frozen_leaf")
RECORDS_DIR = "records"
"""Where, in the cluster directory, the leaves append their request records (shared, writable)."""
WAIT_S = 60.0
"""Bound on every wait of the schedule (a leaf listing a version, the root reporting a hash)."""


@dataclass(slots=True)
class FaultLog:
    """What the schedule did (written by the fault thread only)."""

    leaf_kills: int = 0
    slow_phases: int = 0
    frozen_phases: int = 0
    storms: int = 0
    rollouts: int = 0
    events: list[str] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)

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
    """How long a slow-leaf phase (a frozen leaf, a rolled-out version) lasts."""
    gap_s: float = 3.0
    """Steady load between faults."""
    seed: int = 0
    rate: float = 100.0
    """Offered requests per second (0 = closed loop, as fast as answers come back)."""
    replicas: int = 2
    """Leaf processes per partition; faults hit one replica at a time."""
    faults: tuple[str, ...] = FAULTS
    """The fault kinds the schedule cycles through, in this order."""
    image: str | None = None
    """Run every server as a container of this image (``LocalCluster(image=...)``)."""

    def __post_init__(self) -> None:
        if not self.faults or set(self.faults) - set(FAULTS) or len(set(self.faults)) != len(self.faults):
            raise ValueError(f"faults must be distinct names from {FAULTS}, got {self.faults!r}")
        if not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes!r}")
        for name in ("concurrency", "deadline_ms", "storm_rewrites", "replicas"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("down_s", "slow_s", "gap_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


def _poll(what: str, done: Callable[[], bool]) -> None:
    """Wait until ``done()`` (bounded by ``WAIT_S``)."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            raise ClusterError(f"soak: {what} did not happen within {WAIT_S:.0f} s")
        time.sleep(0.1)  # polling servers' reports, bounded by the deadline


def _listed(target: str, tls: TlsConfig, model: str) -> set[str]:
    with sync_channel(target, tls, []) as channel:
        reply = leaf_pb2_grpc.LeafStub(channel).ListModels(leaf_pb2.ListModelsRequest(), timeout=5)
    return {v for m in reply.models if m.name == model for v in m.versions}


def _root_hash(target: str, tls: TlsConfig, bundle: str) -> str:
    with sync_channel(target, tls, []) as channel:
        status = root_pb2_grpc.RootStub(channel).Status(root_pb2.RootStatusRequest(), timeout=5)
    return next((b.content_hash for b in status.bundles if b.name == bundle), "")


def _rollout(cluster: LocalCluster, storm: AllowlistStorm, partition: str, hold_s: float, note: Callable[[str], None]) -> None:
    """A new version of the partition's first model, in the staged rollout's order: listed in
    the bundle first (the root confirms the hash; requests stay on the served version), then
    delivered to the repository (every replica loads it), held, then rolled back in reverse:
    out of the repository (no replica lists it), then out of the bundle. At no point do the
    leaves serve only versions the bundle does not list."""
    leaves = [leaf for leaf in cluster.leaves() if leaf.partition == partition]
    model = sorted(leaves[0].models)[0]
    model_dir = Path(leaves[0].repo_dir) / model
    latest = latest_version(p.name for p in model_dir.iterdir() if not p.name.startswith("."))
    assert latest is not None and latest.isdigit(), f"{model_dir}: no numeric version"
    version = str(int(latest) + 1)
    tls = cluster.client_tls
    bundle_file = Path(cluster.root().bundle_files[partition])

    def root_has_bundle() -> bool:
        want = hashlib.sha256(bundle_file.read_bytes()).hexdigest()
        return _root_hash(cluster.root().target, tls, partition) == want

    storm.add_version(partition, model, version)
    _poll("root reports the bundle with the new version", root_has_bundle)
    staging = model_dir / f".{version}.incoming"
    shutil.copytree(model_dir / latest, staging)
    os.rename(staging, model_dir / version)
    _poll(f"{model}/{version} loaded", lambda: all(version in _listed(l.target, tls, model) for l in leaves))
    note(f"rollout: {model}/{version} in bundle {partition} and on {len(leaves)} leaf replica(s)")
    time.sleep(hold_s)  # the new version serves this long
    graveyard = model_dir / f".{version}.removed"
    os.rename(model_dir / version, graveyard)
    shutil.rmtree(graveyard)
    _poll(f"{model}/{version} unloaded", lambda: not any(version in _listed(l.target, tls, model) for l in leaves))
    storm.remove_version(partition, model, version)
    _poll("root reports the rolled-back bundle", root_has_bundle)
    note(f"rollback: {model}/{version} out of every replica and bundle {partition}")


def _served_again(load: LoadProcess, models: Sequence[str], since: float) -> None:
    """Wait (bounded) for a request started after ``since`` whose ``models`` all succeeded:
    a fault's phase lasts until the root serves its partition again (a restarted leaf is
    SERVING before the root's channel has reconnected to it)."""
    if load.wait_for(lambda o: o.started > since and all(o.models.get(m) == "OK" for m in models), WAIT_S) is None:
        raise ClusterError(f"soak: models {list(models)} not served again within {WAIT_S:.0f} s")


def _run_faults(
    cluster: LocalCluster, storm: AllowlistStorm, opts: SoakOptions, until: float, load: LoadProcess
) -> FaultLog:
    """The fault schedule: cycles through the faults with steady gaps until ``until`` (monotonic),
    each fault at least once, each leaf fault on one replica (rotating); the fault in
    progress at that time finishes, so every leaf is up when it returns. A leaf fault's phase
    ends once the root serves the partition again."""
    faults = FaultLog()
    rng = random.Random(opts.seed)
    partitions = sorted({leaf.partition for leaf in cluster.leaves()})
    models_of = {leaf.partition: leaf.models for leaf in cluster.leaves()}
    started = time.monotonic()
    delay_ms = str(2 * opts.deadline_ms)

    def pause(seconds: float) -> None:  # pacing the schedule, not synchronisation
        time.sleep(max(0.0, min(seconds, until - time.monotonic())))

    def note(text: str) -> None:
        faults.note(started, text)

    kinds = opts.faults
    for i in range(1_000_000):
        pause(opts.gap_s)
        if time.monotonic() >= until and i >= len(kinds):  # every fault runs at least once
            break
        fault = kinds[i % len(kinds)]
        partition = rng.choice(partitions)
        replica = (i // len(kinds)) % opts.replicas
        begin = time.monotonic()
        if fault == "leaf_kill":
            note(f"SIGKILL leaf {partition} replica {replica}")
            cluster.kill_leaf(partition, replica=replica)
            faults.leaf_kills += 1
            time.sleep(opts.down_s)  # the replica stays down this long
            cluster.restart_leaf(partition, replica=replica)
            _served_again(load, models_of[partition], time.monotonic())
            note(f"leaf {partition} replica {replica} restarted on its port and served again")
        elif fault == "storm":
            note(f"reload storm: {opts.storm_rewrites} rewrites")
            storm.storm(opts.storm_rewrites, corrupt_fraction=0.1)
            faults.storms += 1
            partition = ""
        elif fault == "slow_leaf":
            note(f"leaf {partition} replica {replica} slow ({delay_ms} ms per request)")
            cluster.restart_leaf(partition, extra_args=["--inject-delay-ms", delay_ms], replica=replica)
            faults.slow_phases += 1
            pause(opts.slow_s)
            cluster.restart_leaf(partition, replica=replica)
            _served_again(load, models_of[partition], time.monotonic())
            note(f"leaf {partition} replica {replica} fast again and served")
        elif fault == "frozen_leaf":
            note(f"SIGSTOP leaf {partition} replica {replica}")
            cluster.freeze_leaf(partition, replica=replica)
            faults.frozen_phases += 1
            try:
                time.sleep(opts.slow_s)  # the replica stays frozen this long
            finally:
                cluster.thaw_leaf(partition, replica=replica)
            _served_again(load, models_of[partition], time.monotonic())
            note(f"leaf {partition} replica {replica} SIGCONT and served again")
        else:
            _rollout(cluster, storm, partition, opts.slow_s, note)
            faults.rollouts += 1
        faults.phases.append(Phase(fault, partition or None, begin, time.monotonic()))
    return faults


def run_soak(workload: str, directory: Path, opts: SoakOptions, engine: Engine | None = None) -> dict[str, Any]:
    """Run one soak; returns the report document (see ``--json``). ``engine``: the container
    engine for ``opts.image`` (None: the cluster finds or starts one)."""
    records = directory / RECORDS_DIR / "leaf-requests.jsonl"
    records.unlink(missing_ok=True)
    cluster = LocalCluster(
        workload, directory, leaf_args=("--torch-threads", "1", "--record-requests", str(records)),
        leaf_writes=(records.parent,), replicas=opts.replicas, image=opts.image, engine=engine,
    )
    with cluster:
        assert cluster.assets is not None
        catalog = json.loads(Path(cluster.assets.catalog).read_text(encoding="utf-8"))
        names = [f["name"] for f in catalog["features"]]
        storm = AllowlistStorm({b: Path(p) for b, p in cluster.root().bundle_files.items()}, names, seed=opts.seed)
        root_pid = cluster.root().pid
        info = cluster.assets.workload.info
        partition_of = {m: p for p, ms in cluster.assets.partitions.items() for m in ms}
        started = time.monotonic()
        with LoadProcess(
            cluster.root().target, directory / "load-outcomes.jsonl", users=info.users, items=info.items,
            candidates=info.candidates_per_request, concurrency=opts.concurrency, deadline_ms=opts.deadline_ms,
            models=list(partition_of), seed=opts.seed, rate=opts.rate,
        ) as load:
            try:
                faults = _run_faults(cluster, storm, opts, started + opts.minutes * 60, load)
            finally:
                storm.restore()
            stats = load.stop()
        elapsed = time.monotonic() - started
        dead = [d for d in cluster.check_alive() if "root" in d]
        root_alive = not dead and cluster.root().pid == root_pid
    leaf_records = read_records(records)
    violations = storm.check_records(leaf_records)
    report: dict[str, Any] = {
        "image": opts.image,
        "replicas": opts.replicas,
        "sent": stats.sent,
        "succeeded": stats.succeeded,
        "success_rate": round(stats.succeeded / stats.sent, 6) if stats.sent else 0.0,
        "failed_by_code": dict(sorted(stats.failed_by_code.items())),
        "by_fault": by_fault(load.outcomes, faults.phases, partition_of),
        "reloads": storm.counts.reloads,
        "corrupt_reloads": storm.counts.corrupt_reloads,
        "leaf_kills": faults.leaf_kills,
        "lost": stats.lost,
        "slow_phases": faults.slow_phases,
        "frozen_phases": faults.frozen_phases,
        "storms": faults.storms,
        "rollouts": faults.rollouts,
        "model_results": dict(sorted(stats.model_results.items())),
        "leaf_requests_recorded": len(leaf_records),
        "allowlist_violations": len(violations),
        "allowlist_violation_examples": violations[:5],
        "root_alive": root_alive,
        "seconds": round(elapsed, 1),
        "requests_per_second": round(stats.sent / elapsed, 1) if elapsed else 0.0,
        "events": faults.events,
    }
    report["targets"] = targets(report, opts.replicas)
    return report


def format_table(report: dict[str, Any]) -> str:
    rows: list[tuple[str, Any]] = [
        *([("image", report["image"])] if report.get("image") else []),
        ("leaf replicas", report["replicas"]),
        ("requests sent", report["sent"]),
        ("succeeded", report["succeeded"]),
        ("success rate", f"{100 * report['success_rate']:.3f}%"),
        *((f"failed {code}", n) for code, n in report["failed_by_code"].items()),
        ("reloads", report["reloads"]),
        ("corrupt reloads", report["corrupt_reloads"]),
        ("leaf kills", report["leaf_kills"]),
        ("slow-leaf phases", report["slow_phases"]),
        ("frozen-leaf phases", report["frozen_phases"]),
        ("version rollouts", report["rollouts"]),
        ("lost", report["lost"]),
        ("leaf requests checked", report["leaf_requests_recorded"]),
        ("allowlist violations", report["allowlist_violations"]),
        ("root stayed up", "yes" if report["root_alive"] else "NO"),
        ("seconds", report["seconds"]),
        ("requests/s", report["requests_per_second"]),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value:>10}" for name, value in rows]
    lines.append("")
    lines.append(f"{'phase':<11} {'requests':>8} {'success':>9} {'p50 ms':>7} {'p99 ms':>7} {'others':>8} "
                 f"{'in p99':>8}  failed")
    for kind, row in report["by_fault"].items():
        others, fast = row["other_partitions_served_rate"], row["other_partitions_within_steady_p99_rate"]
        lines.append(
            f"{kind:<11} {row['requests']:>8} {100 * row['success_rate']:>8.3f}% {row['p50_ms']:>7} {row['p99_ms']:>7} "
            f"{'-' if others is None else f'{100 * others:.2f}%':>8} {'-' if fast is None else f'{100 * fast:.2f}%':>8}"
            f"  {row['failed_by_code'] or ''}"
        )
    lines.append("others: other partitions' model results served; in p99: ... and within the steady p99")
    lines.append("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in report["targets"].items()))
    return "\n".join(lines)


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
    p.add_argument("--replicas", type=int, default=2, help="leaf processes per partition (default 2)")
    p.add_argument("--image", default=None, help="run every root and leaf as a container of this image")
    p.add_argument("--faults", default=",".join(FAULTS),
                   help=f"comma-separated fault kinds to cycle through (default: all of {','.join(FAULTS)})")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        opts = SoakOptions(args.minutes, args.concurrency, args.deadline_ms, args.storm_rewrites,
                           gap_s=args.gap_s, seed=args.seed, rate=args.rate, replicas=args.replicas,
                           faults=tuple(f.strip() for f in args.faults.split(",") if f.strip()), image=args.image)
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
    return 0 if all(report["targets"].values()) else 1
