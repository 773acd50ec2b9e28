"""``rootleaf bench [cluster] --workload W --json OUT``: what trimming, LZ4 and dedup cost and save.

Starts the workload's local cluster once (leaves stay up) and runs every mode of the root's
switches (trim x lz4 x request-feature dedup) once per round, interleaved (forward order,
then reversed: ABBA), each run on a freshly started root with that config and the same
request pool:

1. bytes: one pass over the pool (also the warm-up, the same for every run); root->leaf
   wire bytes from the root's counters, checked against the leaves' received-bytes
   counters, beside two floors (``benchmarks.floors``): per model and per partition;
2. scores of the first pool requests, sent one at a time, compared with the first run's;
3. closed loop: max throughput with ``--concurrency`` callers;
4. open loop at one fixed rate for every mode (``--rate``, default a fraction of the first
   run's max throughput): p50/p99 latency, root/leaf CPU per request (``/proc/<pid>/stat``),
   leaf ingress and root egress MB/s.

Several root variants can be compared in one run on the same leaves, pool and open-loop
rate: ``--feature-store`` given more than once (``local``, ``redis://...``,
``redis-cluster://...``) runs the modes once per store, ``--root-workers 1,2`` once per
number of root worker processes (root CPU is then the supervisor's and its workers'),
restarting only the root.

During the load phases the host's busy CPU outside the cluster and the load generator is
recorded per run. Each figure is reported as the median over rounds with its spread, and
each target ratio is flagged when its spread over rounds exceeds the difference it claims
(``benchmarks.cluster_rounds``). The benchmark process runs on its main thread; each phase
is one ``asyncio.run`` of the ``cluster_load`` drivers, bounded in requests and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from harness.load import LoadClient, PhaseResult, Progress, RequestPool
from benchmarks.cluster_metrics import Snapshot, idle_cpu_cores, snapshot
from benchmarks.cluster_report import evaluate_targets, print_table, write_chart
from benchmarks.cluster_rounds import aggregate, round_orders
from benchmarks.floors import Floors, compute_floors
from benchmarks.link import LINK_ENV, run_shaped
from benchmarks.tracing_bench import otlp_sink, parse_tracing, sink_spans, tracing_variant
from harness.demo_assets import DemoAssets
from harness.local_cluster import LocalCluster
from harness.workload import Workload
from root.config import CLUSTER_URL_SCHEMES
from root.redis_store import REDIS_SCHEMES

log = logging.getLogger("rootleaf.bench.cluster")


@dataclass(frozen=True, slots=True)
class Mode:
    """One setting of the root's switches."""

    trim: bool
    lz4: bool
    dedup: bool
    part: bool = False
    """One ``Leaf/ScorePartition`` call per partition (else one ``Leaf/Score`` per model)."""
    auto: bool = False
    """``compression = "auto"`` (LZ4 per partition when the link bounds) instead of ``lz4``."""

    @property
    def label(self) -> str:
        switches = (("trim", self.trim), ("auto" if self.auto else "lz4", self.lz4), ("dedup", self.dedup),
                    ("part", self.part))
        parts = [name for name, on in switches if on]
        return "+".join(parts) if parts else "baseline"

    def overrides(self) -> dict[str, Any]:
        return {
            "trim": self.trim,
            "compression": ("auto" if self.auto else "lz4") if self.lz4 else "none",
            "dedup_request_features": self.dedup,
            "partition_calls": self.part,
        }


BASELINE = Mode(False, False, False)
FULL = Mode(True, True, True, True)
# Baseline first (it sets the open-loop rate and the reference scores), full last. The
# eight trim x lz4 x dedup modes call each model separately (as roots did before partition
# calls); the last two add one call per partition.
ALL_MODES: tuple[Mode, ...] = (
    BASELINE,
    Mode(False, False, True),
    Mode(False, True, False),
    Mode(False, True, True),
    Mode(True, False, False),
    Mode(True, False, True),
    Mode(True, True, False),
    Mode(True, True, True),
    Mode(False, True, True, True),
    FULL,
)
# Named with --modes only: partition calls without LZ4, and with compression chosen per partition.
EXTRA_MODES: tuple[Mode, ...] = (
    Mode(True, False, True, True), Mode(True, True, True, True, auto=True), Mode(False, True, True, True, auto=True),
)


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """Sizes of each phase; the defaults suit w1 on a small machine."""

    concurrency: int = 8
    """Callers in the closed-loop phase."""
    closed_s: float = 8.0
    """Closed-loop phase length (seconds)."""
    closed_max_requests: int = 2000
    """Closed-loop phase request cap."""
    rate: float | None = None
    """Open-loop offered rate (req/s); None = ``rate_fraction`` x the first mode's max throughput."""
    rate_fraction: float = 0.5
    """Share of the first mode's max throughput used as the open-loop rate."""
    open_s: float = 10.0
    """Open-loop phase length (seconds); requests = max(open_min_requests, rate x open_s)."""
    open_min_requests: int = 40
    """Fewest open-loop requests per mode (so p99 is not just the maximum of a handful)."""
    idle_s: float = 4.0
    """Idle phase after the open loop: the root's CPU with no load (its health and version
    rounds), subtracted from the open loop's CPU in the ``_net`` figures."""
    pool_size: int = 32
    """Distinct requests cycled by every phase (the bytes phase sends each once)."""
    probe_requests: int = 4
    """Pool requests whose scores are compared across modes."""
    timeout_s: float = 10.0
    """Client deadline of each Score call."""
    progress: bool = True
    """Draw stderr progress bars."""
    rounds: int = 2
    """Interleaved rounds: every mode runs once per round, reversed order in odd rounds."""

    def __post_init__(self) -> None:
        for name in ("rounds", "concurrency", "closed_max_requests", "pool_size", "probe_requests", "open_min_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("closed_s", "open_s", "timeout_s", "idle_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if not 0 < self.rate_fraction <= 1:
            raise ValueError(f"rate_fraction must be in (0, 1], got {self.rate_fraction}")


def _run(coro_fn: Callable[[LoadClient], Any], target: str, timeout_s: float) -> Any:
    async def main() -> Any:
        client = LoadClient(target, timeout_s)
        try:
            return await coro_fn(client)
        finally:
            await client.close()

    return asyncio.run(main())


@dataclass(slots=True)
class _ModeRun:
    mode: Mode
    result: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)


class ClusterBench:
    """Runs the modes on one started ``LocalCluster``."""

    def __init__(self, cluster: LocalCluster, options: BenchOptions, max_rps_limit: float | None = None) -> None:
        self.cluster = cluster
        self.options = options
        self.max_rps_limit = max_rps_limit
        """The throughput target's limit when not the default (3x when a link binds)."""
        assert cluster.assets is not None
        self.assets = cluster.assets
        workload: Workload = self.assets.workload
        info = workload.info
        self.pool = RequestPool.build(
            [m.name for m in workload.models], info.users, info.items, info.candidates_per_request,
            options.pool_size, info.seed,
        )
        self.rate = options.rate
        self.floors = Floors(0.0, 0.0)
        self._fresh_root = True
        self._leaf_args: tuple[str, ...] = ()
        self.reference: dict[str, np.ndarray] | None = None

    def _snapshot(self) -> Snapshot:
        root = self.cluster.root()
        leaves = self.cluster.leaves()
        return snapshot(root.metrics_url, root.pid, [l.metrics_url for l in leaves], [l.pid for l in leaves])

    def _progress(self, mode: Mode, phase: str) -> Progress:
        return Progress(f"{mode.label}: {phase}", self.options.progress)

    def run_mode(self, mode: Mode, variant: "Variant | None" = None) -> dict[str, Any]:
        opts = self.options
        leaf_args = variant.leaf_args if variant else ()
        if leaf_args != self._leaf_args:
            for leaf in self.cluster.leaves():
                self.cluster.restart_leaf(leaf.partition, extra_args=leaf_args, replica=leaf.replica)
            self._leaf_args = leaf_args
        root = self.cluster.root()
        wanted = {**(variant.overrides if variant else {}), **mode.overrides()}
        # Every run gets a root started for it (the cluster's first one is fresh already),
        # so no mode inherits a warm root from the run before it.
        if not self._fresh_root or {k: root.settings.get(k) for k in wanted} != wanted:
            root = self.cluster.restart_root("production", wanted)
        self._fresh_root = False
        target = root.target
        n = len(self.pool)

        # 1. bytes: each pool request once (also warms the root's feature cache)
        before = self._snapshot()
        bar = self._progress(mode, "bytes pass")
        bytes_phase: PhaseResult = _run(
            lambda c: c.closed_loop(self.pool, min(4, n), opts.timeout_s * n, n, bar), target, opts.timeout_s
        )
        bar.done(f"{n} requests")
        delta = self._snapshot().minus(before)
        sent = max(delta.root_requests, 1.0)

        # 2. scores, one request at a time
        scores: dict[str, np.ndarray] = _run(lambda c: c.scores(self.pool, opts.probe_requests), target, opts.timeout_s)

        # 3. closed loop: max throughput
        before_closed = self._snapshot()
        bar = self._progress(mode, f"closed loop x{opts.concurrency}")
        closed: PhaseResult = _run(
            lambda c: c.closed_loop(self.pool, opts.concurrency, opts.closed_s, opts.closed_max_requests, bar),
            target, opts.timeout_s,
        )
        bar.done(f"{closed.sent} requests, {closed.rps:.1f} req/s")
        busy_closed = self._snapshot().minus(before_closed)
        if self.rate is None:
            self.rate = max(0.5, round(opts.rate_fraction * closed.rps, 1))
            log.info("open-loop rate for every mode: %.1f req/s (%.0f%% of %s max)", self.rate,
                     100 * opts.rate_fraction, mode.label)

        # 4. open loop at the fixed rate: latency and CPU per request
        count = max(opts.open_min_requests, int(round(self.rate * opts.open_s)))
        before_open = self._snapshot()
        open_started = time.monotonic()
        bar = self._progress(mode, f"open loop {self.rate:g}/s")
        opened: PhaseResult = _run(lambda c: c.open_loop(self.pool, self.rate or 1.0, count, progress=bar),
                                   target, opts.timeout_s)
        bar.done(f"{opened.sent} requests, p50 {opened.percentile(50):.1f} ms, p99 {opened.percentile(99):.1f} ms")
        cpu = self._snapshot().minus(before_open)
        open_wall_s = time.monotonic() - open_started
        handled = max(cpu.root_requests, 1.0)

        # 5. idle: the root's background CPU rate, read from /proc alone (no scrape)
        idle_cores = idle_cpu_cores(root.pid, opts.idle_s)
        net_root_cpu_s = max(0.0, cpu.root_cpu_s - idle_cores * open_wall_s)
        load_s = max(closed.elapsed_s + opened.elapsed_s, 1e-9)
        cells = self.assets.workload.info.candidates_per_request * len(self.pool.models)
        floors = self.floors

        if self.reference is None:
            self.reference = scores
        match, max_diff = _compare(self.reference, scores)
        return {
            "trim": mode.trim,
            "lz4": mode.lz4 and not mode.auto,
            "auto": mode.auto,
            "dedup": mode.dedup,
            "part": mode.part,
            "label": f"{variant.name}/{mode.label}" if variant and variant.name else mode.label,
            "variant": variant.name if variant else "",
            "wire_bytes_per_request": delta.root_wire / sent,
            "floor_bytes_per_request": floors.per_model,
            "wire_over_floor": (delta.root_wire / sent) / floors.per_model if floors.per_model else math.nan,
            "partition_floor_bytes_per_request": floors.per_partition,
            "wire_over_partition_floor": (
                (delta.root_wire / sent) / floors.per_partition if floors.per_partition else math.nan
            ),
            "leaf_received_bytes_per_request": delta.leaf_wire / sent,
            "trimmed_bytes_per_request": delta.root_trimmed / sent,
            "untrimmed_bytes_per_request": delta.root_untrimmed / sent,
            "leaf_decoded_bytes_per_request": delta.leaf_decoded / sent,
            "wire_bytes_per_partition": {k: v / sent for k, v in sorted(delta.root_by_partition.items())},
            "root_cpu_ms_per_request": 1e3 * cpu.root_cpu_s / handled,
            "leaf_cpu_ms_per_request": 1e3 * cpu.leaf_cpu_s / handled,
            "root_cpu_us_per_candidate_model": 1e6 * cpu.root_cpu_s / handled / cells,
            # The same less what the root spends with no load at all over the phase's length:
            # at a low rate its background work is a large share of the CPU per request.
            "root_cpu_ms_per_request_net": 1e3 * net_root_cpu_s / handled,
            "root_idle_cpu_ms_per_s": 1e3 * idle_cores,
            # At max throughput the root's fixed background work (health and version rounds,
            # metrics) is spread over many more requests than at the open-loop rate.
            "root_cpu_ms_per_request_closed": 1e3 * busy_closed.root_cpu_s / max(busy_closed.root_requests, 1.0),
            "leaf_cpu_ms_per_request_closed": 1e3 * busy_closed.leaf_cpu_s / max(busy_closed.root_requests, 1.0),
            "outside_cpu_cores": (busy_closed.outside_cpu_s + cpu.outside_cpu_s) / load_s,
            "load_generator_cpu_cores": (busy_closed.bench_cpu_s + cpu.bench_cpu_s) / load_s,
            # Per leaf, as a NIC sees it: the busiest partition's share of the root's egress.
            "leaf_ingress_mb_s": max(cpu.root_by_partition.values(), default=0.0) / max(opened.elapsed_s, 1e-9) / 1e6,
            "root_egress_mb_s": cpu.root_wire / max(opened.elapsed_s, 1e-9) / 1e6,
            "offered_rps": self.rate,
            "achieved_rps": opened.rps,
            "p50_ms": opened.percentile(50),
            "p90_ms": opened.percentile(90),
            "p99_ms": opened.percentile(99),
            "max_rps": closed.rps,
            "closed_loop_p50_ms": closed.percentile(50),
            "closed_loop_p99_ms": closed.percentile(99),
            "requests": bytes_phase.sent + closed.sent + opened.sent + opts.probe_requests,
            "errors": bytes_phase.errors + closed.errors + opened.errors,
            "error_samples": (bytes_phase.error_samples + closed.error_samples + opened.error_samples)[:5],
            "scores_compared": len(scores),
            "scores_match_baseline": match,
            "scores_max_abs_diff": max_diff,
        }

    def run(self, modes: Sequence[Mode], variants: Sequence["Variant"] = ()) -> dict[str, Any]:
        """Every mode, once per root variant (one unnamed variant when none is given)."""
        started = time.perf_counter()
        self.floors = compute_floors(self.assets, self.pool)
        units = [(variant, mode) for variant in variants or (None,) for mode in modes]
        orders = round_orders(len(units), self.options.rounds)
        per_round: list[list[dict[str, Any]]] = []
        for number, order in enumerate(orders):
            runs: dict[int, dict[str, Any]] = {}
            for index in order:
                variant, mode = units[index]
                r = runs[index] = self.run_mode(mode, variant)
                log.info("round %d %s: %.0f B/req wire, p99 %.1f ms, %.1f req/s max, %d errors", number + 1,
                         r["label"], r["wire_bytes_per_request"], r["p99_ms"], r["max_rps"], r["errors"])
            per_round.append([runs[i] for i in range(len(units))])
        results = [aggregate([runs[i] for runs in per_round]) for i in range(len(units))]
        workload = self.assets.workload
        doc = {
            "workload": workload.name,
            "candidates_per_request": workload.info.candidates_per_request,
            "models": [m.name for m in workload.models],
            "partitions": workload.partitions(),
            "pool_size": len(self.pool),
            "offered_rps": self.rate,
            "rounds": self.options.rounds,
            "round_orders": [[results[i]["label"] for i in order] for order in orders],
            "options": {k: getattr(self.options, k) for k in self.options.__dataclass_fields__},
            "host": {"cpus": os.cpu_count(), "platform": sys.platform},
            "elapsed_s": time.perf_counter() - started,
            "modes": results,
        }
        doc["targets"] = evaluate_targets(results, per_round, max_rps_limit=self.max_rps_limit)
        return doc


def _compare(reference: dict[str, np.ndarray], scores: dict[str, np.ndarray]) -> tuple[bool, float]:
    if not reference or reference.keys() != scores.keys():
        return False, math.inf
    diff = max(float(np.max(np.abs(reference[k] - scores[k]))) if reference[k].size else 0.0 for k in reference)
    exact = all(np.array_equal(reference[k], scores[k]) for k in reference)
    return exact, diff


@dataclass(frozen=True, slots=True)
class Variant:
    """One root setting compared beside others in the same run (same leaves, pool, rate)."""

    name: str
    overrides: dict[str, Any]
    leaf_args: tuple[str, ...] = ()
    """Extra arguments of every leaf for this variant (leaves are restarted when they change)."""




def store_kind(feature_store: str) -> str:
    """``local``, ``redis`` or ``redis-cluster`` for a ``--feature-store`` value."""
    if feature_store == "local":
        return "local"
    if feature_store.startswith(REDIS_SCHEMES):
        return "redis"
    if feature_store.startswith(CLUSTER_URL_SCHEMES):
        return "redis-cluster"
    raise ValueError(
        f"--feature-store must be 'local', a redis:// URL or a redis-cluster:// URL, got {feature_store!r}"
    )


def store_overrides(feature_store: str, cache_max_bytes: int | None) -> dict[str, Any]:
    """Root config overrides selecting the feature store (see ``store_kind``) and cache size."""
    overrides: dict[str, Any] = {}
    kind = store_kind(feature_store)
    if kind != "local":
        overrides |= {"feature_store.kind": kind, "feature_store.url": feature_store}
    if cache_max_bytes is not None:
        if cache_max_bytes < 0:
            raise ValueError(f"--cache-max-bytes must be >= 0, got {cache_max_bytes}")
        overrides["cache.max_bytes"] = cache_max_bytes
    return overrides


def load_redis(workload: str | Path, url: str, progress: bool) -> None:
    """Write the workload's data into Redis or a Redis Cluster: the rows the local store holds."""
    from harness.workload import builtin_workload, load_workload
    from harness.datagen import load_generated

    spec = load_workload(builtin_workload(str(workload)))
    asyncio.run(load_generated(url, spec.catalog(), users=spec.info.users, items=spec.info.items,
                               seed=spec.info.seed, progress=progress))


STORE_TIMEOUT_MS = 1000
"""Fetch timeout of remote stores in the benchmark: it measures what a fetch costs, and a
closed loop on a small machine easily holds a fetch past the 100 ms production default."""


def store_variants(
    feature_stores: Sequence[str], cache_max_bytes: int | None, timeout_ms: int = STORE_TIMEOUT_MS
) -> list[Variant]:
    """One variant per store (named by kind); a single store is the unnamed variant."""
    kinds = [store_kind(s) for s in feature_stores]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"--feature-store: one store per kind, got {kinds}")

    def overrides(store: str, kind: str) -> dict[str, Any]:
        timeout = {"feature_store.timeout_ms": timeout_ms} if kind != "local" else {}
        return {**store_overrides(store, cache_max_bytes), **timeout}

    if len(kinds) == 1:
        return [Variant("", overrides(feature_stores[0], kinds[0]))]
    return [Variant(k, {"feature_store.kind": k, **overrides(s, k)}) for s, k in zip(feature_stores, kinds)]


def worker_variants(stores: list[Variant], root_workers: Sequence[int]) -> list[Variant]:
    """Every store variant once per worker count (``workers=N`` in the names when several)."""
    if any(n < 1 for n in root_workers):
        raise ValueError(f"--root-workers must be >= 1, got {list(root_workers)}")
    if len(root_workers) <= 1:
        n = root_workers[0] if root_workers else 1
        return [Variant(v.name, {**v.overrides, "workers": n}) for v in stores]
    return [
        Variant("/".join(p for p in (v.name, f"workers={n}") if p), {**v.overrides, "workers": n})
        for v in stores for n in root_workers
    ]


def run_cluster_bench(
    workload: str | Path, directory: str | Path, modes: Sequence[Mode], options: BenchOptions,
    leaf_args: Sequence[str] = ("--torch-threads", "1"),
    feature_store: str | Sequence[str] = "local",
    cache_max_bytes: int | None = None,
    root_workers: Sequence[int] = (1,),
    store_timeout_ms: int = STORE_TIMEOUT_MS,
    max_rps_limit: float | None = None,
    tracing: Sequence[float | None] = (),
    link_gbps: float = 0.0,
    *,
    image: str | None = None,
    _tracing_endpoint: tuple[str, tuple[float | None, ...]] | None = None,
) -> dict[str, Any]:
    """Start the workload's cluster, run ``modes`` (per feature store, root worker count and
    tracing setting when several are given), stop it; returns the JSON document."""
    if tracing:
        sink_dir = Path(directory) / "otlp-sink"
        with otlp_sink(sink_dir) as endpoint:
            doc = run_cluster_bench(
                workload, directory, modes, options, leaf_args, feature_store, cache_max_bytes, root_workers,
                store_timeout_ms, max_rps_limit, link_gbps=link_gbps, image=image,
                _tracing_endpoint=(endpoint, tuple(tracing)),
            )
        doc["tracing"] = ["off" if r is None else r for r in tracing]
        doc["tracing_spans_exported"] = sink_spans(sink_dir)
        return doc
    stores = [feature_store] if isinstance(feature_store, str) else list(feature_store)
    variants = worker_variants(store_variants(stores, cache_max_bytes, store_timeout_ms), root_workers)
    if _tracing_endpoint is not None:
        endpoint, ratios = _tracing_endpoint
        variants = [
            Variant("/".join(p for p in (v.name, name) if p), {**v.overrides, **overrides}, leaf_args)
            for v in variants for name, overrides, leaf_args in (tracing_variant(r, endpoint) for r in ratios)
        ]
    if link_gbps:  # what compression = "auto" weighs bytes against
        variants = [Variant(v.name, {**v.overrides, "link_gbps": link_gbps}, v.leaf_args) for v in variants]
    for store in stores:
        if store_kind(store) != "local":
            load_redis(workload, store, options.progress)
    # With several stores the cluster's own overrides hold none of them: each variant's root
    # is started with its store on top of the cluster's (the default local) config.
    base = variants[0].overrides if len(variants) == 1 else {**store_overrides("local", cache_max_bytes), "workers": 1}
    base = {k: v for k, v in base.items() if not k.startswith("tracing.")}  # variants set it per root
    cluster = LocalCluster(workload, directory, root_overrides={**base, **modes[0].overrides()}, leaf_args=leaf_args,
                           image=image)
    cluster.start()
    try:
        doc = ClusterBench(cluster, options, max_rps_limit).run(modes, variants)
    finally:
        cluster.stop()
    kinds = [store_kind(s) for s in stores]
    doc["feature_store"] = kinds[0] if len(kinds) == 1 else kinds
    doc["cache_max_bytes"] = cache_max_bytes
    doc["root_workers"] = list(root_workers)
    doc["image"] = image
    return doc


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_modes(text: str) -> list[Mode]:
    if text == "all":
        return list(ALL_MODES)
    by_label = {m.label: m for m in (*ALL_MODES, *EXTRA_MODES)}
    out = []
    for label in text.split(","):
        if label not in by_label:
            raise argparse.ArgumentTypeError(f"unknown mode {label!r} (known: all, {', '.join(by_label)})")
        out.append(by_label[label])
    return out


def build_parser(prog: str = "rootleaf bench cluster") -> argparse.ArgumentParser:
    defaults = BenchOptions()
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workload", default="w1", help="workload file or shipped name (default w1)")
    p.add_argument("--dir", default=".rootleaf/bench", help="work directory (assets are cached here)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--chart", type=Path, default=None, help="write a PNG chart here")
    p.add_argument("--modes", type=parse_modes, default=list(ALL_MODES),
                   help="all, or comma-separated labels like baseline,lz4+dedup,trim+lz4+dedup")
    p.add_argument("--concurrency", type=int, default=defaults.concurrency)
    p.add_argument("--closed-s", type=float, default=defaults.closed_s)
    p.add_argument("--closed-max-requests", type=int, default=defaults.closed_max_requests)
    p.add_argument("--rate", type=float, default=None, help="open-loop req/s (default: a fraction of the first mode's max)")
    p.add_argument("--rate-fraction", type=float, default=defaults.rate_fraction)
    p.add_argument("--open-s", type=float, default=defaults.open_s)
    p.add_argument("--idle-s", type=float, default=defaults.idle_s,
                   help="idle phase per mode measuring the root's background CPU (default %(default)s)")
    p.add_argument("--open-min-requests", type=int, default=defaults.open_min_requests)
    p.add_argument("--pool-size", type=int, default=defaults.pool_size)
    p.add_argument("--probe-requests", type=int, default=defaults.probe_requests)
    p.add_argument("--timeout-s", type=float, default=defaults.timeout_s)
    p.add_argument("--leaf-torch-threads", type=int, default=1, help="intra-op threads per leaf (0 = torch default)")
    p.add_argument("--feature-store", action="append", default=None, metavar="STORE",
                   help="'local' (file-backed, default), a redis:// or a redis-cluster://host:port,... URL (the "
                        "workload's data is loaded first); repeat to compare stores in one run")
    p.add_argument("--store-timeout-ms", type=int, default=STORE_TIMEOUT_MS,
                   help="feature_store.timeout_ms of redis/redis-cluster roots in the benchmark")
    p.add_argument("--root-workers", type=_int_list, default=[1], metavar="N[,N...]",
                   help="root worker processes (rootleaf root --workers); several = one run each, e.g. 1,2")
    p.add_argument("--cache-max-bytes", type=int, default=None,
                   help="root feature cache size (0 = off, so every request reads the store)")
    p.add_argument("--link-gbps", type=float, default=None,
                   help="run the cluster in a private network namespace whose loopback is a G Gbit/s token bucket")
    p.add_argument("--link-delay-us", type=float, default=0.0, help="netem delay on that link (when the kernel has netem)")
    p.add_argument("--tracing", type=parse_tracing, default=[], metavar="off|R[,...]",
                   help="tracing settings to compare, e.g. off,0.01,1 (spans to an OTLP sink process)")
    p.add_argument("--rounds", type=int, default=defaults.rounds,
                   help="interleaved rounds (modes in forward order, then reversed, ...); medians are reported")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--image", default=None, metavar="TAG", help="run the cluster as containers of this image")
    return p


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        concurrency=args.concurrency, closed_s=args.closed_s, closed_max_requests=args.closed_max_requests,
        rate=args.rate, rate_fraction=args.rate_fraction, open_s=args.open_s, idle_s=args.idle_s,
        open_min_requests=args.open_min_requests, pool_size=args.pool_size,
        probe_requests=args.probe_requests, timeout_s=args.timeout_s, progress=not args.no_progress,
        rounds=args.rounds,
    )


def _without_link_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` less ``--link-gbps`` / ``--link-delay-us`` (and their values)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--link-gbps", "--link-delay-us"):
            skip = True
            continue
        if arg.startswith(("--link-gbps=", "--link-delay-us=")):
            continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    link: dict[str, Any] = {}
    if os.environ.get(LINK_ENV):
        link = json.loads(os.environ[LINK_ENV])
    elif args.link_gbps is not None:
        if not args.link_gbps > 0 or args.link_delay_us < 0:
            parser.error("--link-gbps must be > 0 and --link-delay-us >= 0")
        code = run_shaped(args.link_gbps, args.link_delay_us, _without_link_flags(argv))
        if code is not None:
            return code
        reason = "unshaped: network namespaces (unshare -n) or ip/tc are not available or not permitted here"
        log.warning("--link-gbps %g: %s", args.link_gbps, reason)
        link = {"gbps": args.link_gbps, "delay_us": args.link_delay_us, "shaped": False,
                "delay_applied": False, "description": reason}
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    stores = args.feature_store or ["local"]
    try:
        worker_variants(store_variants(stores, args.cache_max_bytes, args.store_timeout_ms), args.root_workers)
    except ValueError as exc:
        parser.error(str(exc))
    doc = run_cluster_bench(args.workload, args.dir, args.modes, options,
                            leaf_args=("--torch-threads", str(args.leaf_torch_threads)),
                            feature_store=stores, cache_max_bytes=args.cache_max_bytes,
                            root_workers=args.root_workers, store_timeout_ms=args.store_timeout_ms,
                            tracing=args.tracing,
                            link_gbps=float(link.get("gbps", 0.0)) if link.get("shaped") else 0.0,
                            # with a link that binds, the throughput target is 3x (2x unshaped)
                            max_rps_limit=3.0 if link.get("shaped") else None, image=args.image)
    if link:
        doc["link"] = link
    print_table(doc)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
        print(f"results: {args.json}")
    if args.chart:
        write_chart(doc, args.chart)
        print(f"chart: {args.chart}")
    return 0 if all(m["errors"] == 0 and m["scores_match_baseline"] for m in doc["modes"]) else 1
