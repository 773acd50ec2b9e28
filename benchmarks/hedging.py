"""``rootleaf bench hedge``: one slow replica, the partition's tail latency with and without
latency-aware routing and hedging (root ``hedging = true | false``), in one run.

Starts a ``LocalCluster`` (ci workload) with two leaf replicas per partition, restarts one
replica of one partition with an injected delay below the deadline, then alternates the
root between ``hedging = false`` and ``true`` (a fresh root per round, ABAB) and drives the
same paced load through each for ``--seconds``. Prints, per mode, the slowed partition's
requests, success rate and p50/p99/max latency over all rounds, and the p99 ratio. The
calling thread owns the cluster; the load runs in its own process.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from harness.soak_load import LoadProcess, Outcome
from harness.local_cluster import LocalCluster
from harness.processes import ClusterError

log = logging.getLogger("rootleaf.bench.hedge")


def _row(name: str, outcomes: list[Outcome]) -> tuple[str, float]:
    ms = np.array([o.elapsed_s * 1000.0 for o in outcomes])
    ok = sum(o.ok for o in outcomes)
    p99 = float(np.percentile(ms, 99))
    line = (f"{name:<9} {len(outcomes):>8} {100 * ok / len(outcomes):>8.2f}% {np.percentile(ms, 50):>8.1f} "
            f"{p99:>8.1f} {ms.max():>8.1f}")
    return line, p99


def run(directory: Path, seconds: float, rounds: int, delay_ms: int, rate: float) -> str:
    lines = [f"slow replica: +{delay_ms} ms per request on one of two replicas; {rounds} rounds x {seconds:.0f} s "
             f"per mode at {rate:.0f} req/s", f"{'hedging':<9} {'requests':>8} {'success':>9} {'p50 ms':>8} "
             f"{'p99 ms':>8} {'max ms':>8}"]
    with LocalCluster("ci", directory, replicas=2) as cluster:
        assert cluster.assets is not None
        partition = sorted(cluster.assets.partitions)[-1]
        models = list(cluster.assets.partitions[partition])
        info = cluster.assets.workload.info
        cluster.restart_leaf(partition, extra_args=["--inject-delay-ms", str(delay_ms)], replica=0)
        seen: dict[str, list[Outcome]] = {"false": [], "true": []}
        for i in range(rounds * 2):
            mode = ("false", "true")[i % 2]
            root = cluster.restart_root(overrides={"hedging": mode == "true"})
            name = f"hedge-{mode}-{i}"
            with LoadProcess(root.target, directory / f"{name}.jsonl", users=info.users, items=info.items,
                             candidates=info.candidates_per_request, concurrency=8, deadline_ms=2000 + delay_ms,
                             models=models, seed=i, rate=rate) as load:
                # Warm-up: the first calls learn the replicas' latencies; not measured.
                load.wait_for(lambda o: False, 2.0)
                skip = len(load.outcomes)
                load.wait_for(lambda o: False, seconds)
                load.stop()
            seen[mode] += load.outcomes[skip:]
            log.info("round %d hedging=%s: %d requests", i, mode, len(load.outcomes) - skip)
    off, p99_off = _row("off", seen["false"])
    on, p99_on = _row("on", seen["true"])
    lines += [off, on, f"p99 off/on: {p99_off / p99_on:.1f}x"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rootleaf bench hedge", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--seconds", type=float, default=10.0, help="measured load per round and mode")
    p.add_argument("--rounds", type=int, default=2, help="rounds (each runs both modes)")
    p.add_argument("--delay-ms", type=int, default=300, help="injected delay of the slow replica")
    p.add_argument("--rate", type=float, default=60.0, help="offered requests/s")
    p.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    directory = args.dir or Path(tempfile.mkdtemp(prefix="rootleaf-hedge-"))
    try:
        print(run(directory.resolve(), args.seconds, args.rounds, args.delay_ms, args.rate))
    except ClusterError as exc:
        print(f"rootleaf bench hedge: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0
