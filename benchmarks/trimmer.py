"""Trimmer benchmark: lookup latency (idle and under a reload storm) and reload-to-visible time.

``rootleaf bench trimmer [--lookups N] [--reloads N] [--json OUT]``. Bundle files are
real files in a temporary directory, watched by the real watchdog observer. Lookup
latency is timed call by call with ``perf_counter_ns`` (timer overhead subtracted);
reload-to-visible is the time from just before an atomic rename of a bundle file to the
moment a lookup returns the new allowlist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trimmer import FeatureTrimmer, TrimmerConfig


@dataclass(frozen=True, slots=True)
class LatencyStats:
    samples: int
    p50_ns: float
    p99_ns: float
    mean_ns: float


@dataclass(frozen=True, slots=True)
class ReloadStats:
    reloads: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class TrimmerBenchResult:
    bundles: int
    models: int
    versions_per_model: int
    features_per_version: int
    debounce_s: float
    timer_overhead_ns: float
    lookup_idle: LatencyStats
    lookup_with_reloader: LatencyStats
    background_reloads: int
    background_reloads_per_s: float
    reload_to_visible: ReloadStats


def bundle_json(bundle: int, models: int, versions: int, features: int, tag: str = "") -> bytes:
    doc = {
        f"b{bundle}_model_{m}": [
            {
                "version": str(v),
                "input_names": [f"feature_{(m * 7 + v * 3 + i) % 2000}{tag}" for i in range(features)],
                "output_names": ["score"],
            }
            for v in range(1, versions + 1)
        ]
        for m in range(models)
    }
    return json.dumps(doc).encode()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def timer_overhead_ns(n: int = 100_000) -> float:
    clock = time.perf_counter_ns
    samples = np.empty(n, dtype=np.int64)
    for i in range(n):
        start = clock()
        samples[i] = clock() - start
    return float(np.median(samples))


def lookup_samples(t: FeatureTrimmer, queries: list[tuple[str, str | None]], n: int) -> np.ndarray:
    """``n`` single-lookup latencies in ns (timer overhead not yet subtracted)."""
    clock = time.perf_counter_ns
    lookup = t.lookup
    samples = np.empty(n, dtype=np.int64)
    q = len(queries)
    for i in range(n):
        model, version = queries[i % q]
        start = clock()
        lookup(model, version)
        samples[i] = clock() - start
    return samples


def latency_stats(samples: np.ndarray, overhead: float) -> LatencyStats:
    corrected = np.maximum(samples - overhead, 0)
    return LatencyStats(
        samples=int(corrected.size),
        p50_ns=float(np.percentile(corrected, 50)),
        p99_ns=float(np.percentile(corrected, 99)),
        mean_ns=float(corrected.mean()),
    )


def reload_to_visible(t: FeatureTrimmer, path: Path, bundle: int, shape: tuple[int, int, int], reloads: int) -> ReloadStats:
    models, versions, features = shape
    probe = f"b{bundle}_model_0"
    times_ms = []
    for r in range(reloads):
        tag = f"_r{r}"
        data = bundle_json(bundle, models, versions, features, tag)
        expected = next(iter(json.loads(data)[probe][-1]["input_names"]))
        start = time.perf_counter()
        write_atomic(path, data)

        def visible() -> bool:
            features_now = t.lookup(probe).features
            return features_now is not None and expected in features_now

        if not t.wait_until(visible, timeout=5.0):
            raise RuntimeError(f"reload {r} not visible within 5 s")
        times_ms.append((time.perf_counter() - start) * 1e3)
    arr = np.array(times_ms)
    return ReloadStats(
        reloads=reloads,
        p50_ms=float(np.percentile(arr, 50)),
        p99_ms=float(np.percentile(arr, 99)),
        max_ms=float(arr.max()),
    )


def run(lookups: int, reloads: int, storm_reloads: int, bundles: int, models: int, versions: int, features: int, debounce_s: float) -> TrimmerBenchResult:
    with tempfile.TemporaryDirectory(prefix="rootleaf-bench-trimmer-") as tmp:
        paths = {}
        for b in range(bundles):
            directory = Path(tmp) / f"bundle{b}"
            directory.mkdir()
            paths[f"bundle{b}"] = directory / "module_info.json"
            write_atomic(paths[f"bundle{b}"], bundle_json(b, models, versions, features))
        config = TrimmerConfig(debounce_s=debounce_s, max_debounce_s=max(debounce_s, TrimmerConfig().max_debounce_s))
        queries: list[tuple[str, str | None]] = []
        for m in range(0, models, max(1, models // 16)):
            queries += [(f"b0_model_{m}", "1"), (f"b1_model_{m}", None), (f"b0_model_{m}", "999"), (f"unknown_{m}", None)]
        overhead = timer_overhead_ns()
        with FeatureTrimmer(paths, config=config) as t:
            lookup_samples(t, queries, 10_000)  # warm up
            idle = latency_stats(lookup_samples(t, queries, lookups), overhead)

            stop = threading.Event()
            storm = [0]
            storm_path = paths[f"bundle{bundles - 1}"]

            def reloader() -> None:
                k = 0
                while not stop.is_set() and k < 1_000_000:
                    k += 1
                    data = bundle_json(bundles - 1, models, versions, features, f"_s{k}")
                    gen = t.generation
                    write_atomic(storm_path, data)
                    # Next write once this one is swapped in: a continuous stream of reloads.
                    t.wait_until(lambda: t.generation != gen or stop.is_set(), timeout=5.0)
                    storm[0] += 1

            thread = threading.Thread(target=reloader, name="bench-reloader", daemon=True)
            began = time.perf_counter()
            thread.start()
            # Keep timing until the reloader has swapped in enough maps to matter.
            chunks = []
            while True:
                chunks.append(lookup_samples(t, queries, 20_000))
                done = sum(c.size for c in chunks) >= lookups and storm[0] >= storm_reloads
                if done or time.perf_counter() - began > 60:
                    break
            busy = latency_stats(np.concatenate(chunks), overhead)
            stop.set()
            thread.join(10)
            rate = storm[0] / (time.perf_counter() - began)
            visible = reload_to_visible(t, paths["bundle0"], 0, (models, versions, features), reloads)
    return TrimmerBenchResult(
        bundles=bundles,
        models=models * bundles,
        versions_per_model=versions,
        features_per_version=features,
        debounce_s=debounce_s,
        timer_overhead_ns=overhead,
        lookup_idle=idle,
        lookup_with_reloader=busy,
        background_reloads=storm[0],
        background_reloads_per_s=rate,
        reload_to_visible=visible,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rootleaf bench trimmer", description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=200_000, help="timed lookups per scenario")
    parser.add_argument("--reloads", type=int, default=100, help="reloads timed for reload-to-visible")
    parser.add_argument("--storm-reloads", type=int, default=30,
                        help="minimum background reloads during the 'with reloader' lookups")
    parser.add_argument("--bundles", type=int, default=4)
    parser.add_argument("--models", type=int, default=50, help="models per bundle")
    parser.add_argument("--versions", type=int, default=3, help="versions per model")
    parser.add_argument("--features", type=int, default=200, help="features per version")
    parser.add_argument("--debounce-s", type=float, default=TrimmerConfig().debounce_s)
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.bundles < 2:
        parser.error("--bundles must be >= 2")
    result = run(args.lookups, args.reloads, args.storm_reloads, args.bundles, args.models, args.versions, args.features, args.debounce_s)
    print(
        f"trimmer: {result.bundles} bundles, {result.models} models x {result.versions_per_model} versions "
        f"x {result.features_per_version} features; timer overhead {result.timer_overhead_ns:.0f} ns (subtracted)"
    )
    for label, stats in (("idle", result.lookup_idle), ("with reloader", result.lookup_with_reloader)):
        print(
            f"  lookup {label:<14} p50 {stats.p50_ns:7.0f} ns   p99 {stats.p99_ns:8.0f} ns   "
            f"mean {stats.mean_ns:8.0f} ns   ({stats.samples} lookups)"
        )
    print(
        f"  background reloader: {result.background_reloads} reloads of a {args.models}-model bundle "
        f"({result.background_reloads_per_s:.1f}/s) during the 'with reloader' lookups"
    )
    rv = result.reload_to_visible
    print(
        f"  reload-to-visible (debounce {result.debounce_s * 1e3:.0f} ms, {rv.reloads} atomic renames): "
        f"p50 {rv.p50_ms:.1f} ms   p99 {rv.p99_ms:.1f} ms   max {rv.max_ms:.1f} ms"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2) + "\n")
        print(f"  wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
