"""What the cluster benchmark reads from running servers: Prometheus counters and process CPU.

Counters are scraped over HTTP from each server's metrics endpoint (``deploy.metrics_scrape``,
the canary analysis' scraper); CPU time comes from ``/proc/<pid>/stat`` (utime + stime),
so no extra dependency is needed. Blocking calls, made on the benchmark's main thread
between load phases (never inside a timed phase).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from deploy.metrics_scrape import merge, scrape

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def host_busy_seconds() -> float:
    """CPU seconds the whole host has spent busy (not idle, not waiting on I/O) since boot,
    summed over cores (``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()
    # cpu user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    values = [int(v) for v in fields[1:9]]
    return (sum(values) - values[3] - values[4]) / _CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant (a root's supervisor and its workers)."""
    seconds = cpu_seconds(pid)
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return seconds
    for task in tasks:
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            try:
                seconds += tree_cpu_seconds(int(kid))
            except OSError:
                pass  # exited between the listing and the read
    return seconds


def idle_cpu_cores(pid: int, seconds: float) -> float:
    """Cores ``pid`` and its descendants use over ``seconds`` of waiting (no scrape, no
    load): a server's background rate, to subtract from a loaded phase of known length."""
    before, started = tree_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return max(0.0, tree_cpu_seconds(pid) - before) / (time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counters and CPU of the whole cluster at one instant."""

    root_wire: float
    """Root -> leaf serialised bytes (all partitions)."""
    root_trimmed: float
    root_untrimmed: float
    root_by_partition: Mapping[str, float]
    """Wire bytes per partition."""
    leaf_wire: float
    """Serialised request bytes the leaves received (all models)."""
    leaf_decoded: float
    root_requests: float
    """Score calls the root finished (all codes)."""
    root_cpu_s: float
    leaf_cpu_s: float
    bench_cpu_s: float = 0.0
    """CPU of the benchmark process itself (the load generator)."""
    host_busy_s: float = 0.0
    """Busy CPU of the whole host (see ``host_busy_seconds``)."""

    @property
    def outside_cpu_s(self) -> float:
        """Host CPU used by processes outside the cluster and the load generator (in a
        difference of snapshots: how busy the rest of the machine was)."""
        return max(0.0, self.host_busy_s - self.root_cpu_s - self.leaf_cpu_s - self.bench_cpu_s)

    def minus(self, before: "Snapshot") -> "Snapshot":
        return Snapshot(
            root_wire=self.root_wire - before.root_wire,
            root_trimmed=self.root_trimmed - before.root_trimmed,
            root_untrimmed=self.root_untrimmed - before.root_untrimmed,
            root_by_partition={
                k: v - before.root_by_partition.get(k, 0.0) for k, v in self.root_by_partition.items()
            },
            leaf_wire=self.leaf_wire - before.leaf_wire,
            leaf_decoded=self.leaf_decoded - before.leaf_decoded,
            root_requests=self.root_requests - before.root_requests,
            root_cpu_s=self.root_cpu_s - before.root_cpu_s,
            leaf_cpu_s=self.leaf_cpu_s - before.leaf_cpu_s,
            bench_cpu_s=self.bench_cpu_s - before.bench_cpu_s,
            host_busy_s=self.host_busy_s - before.host_busy_s,
        )


def snapshot(root_metrics: str, root_pid: int, leaf_metrics: Iterable[str], leaf_pids: Iterable[int]) -> Snapshot:
    """Scrape the root and every leaf, and read their CPU time."""
    root = scrape(root_metrics)
    leaves = merge(scrape(url) for url in leaf_metrics)
    part = "rootleaf_root_partition_bytes_total"
    received = "rootleaf_leaf_received_bytes_total"
    return Snapshot(
        root_wire=root.total(part, stage="wire"),
        root_trimmed=root.total(part, stage="trimmed"),
        root_untrimmed=root.total(part, stage="untrimmed"),
        root_by_partition=root.by_label(part, "partition", stage="wire"),
        leaf_wire=leaves.total(received, stage="wire"),
        leaf_decoded=leaves.total(received, stage="decoded"),
        root_requests=root.total("rootleaf_root_requests_total"),
        root_cpu_s=tree_cpu_seconds(root_pid),
        leaf_cpu_s=sum(cpu_seconds(pid) for pid in leaf_pids),
        bench_cpu_s=cpu_seconds(os.getpid()),
        host_busy_s=host_busy_seconds(),
    )
