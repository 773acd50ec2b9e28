"""Prometheus metrics of the root, defined once per process (default registry).

Several roots in one process (tests) share these series; read deltas, not absolutes.
Updated from the root's event loop and its encode thread; prometheus-client is thread-safe.
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from typing import Any, TypeVar

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_SCORE_BUCKETS = tuple(i / 20 for i in range(1, 21))

REQUESTS = Counter("rootleaf_root_requests_total", "Score calls by final status code", ["code"])
REQUEST_SECONDS = Histogram(
    "rootleaf_root_request_seconds", "Score call latency inside the root", buckets=_LATENCY_BUCKETS
)
MODEL_RESULTS = Counter(
    "rootleaf_root_model_results_total", "Per-model results returned, by status code", ["model", "code"]
)
UNKNOWN_VERSION = "unknown"
"""The ``version`` label of a request whose version no leaf has reported yet: label values
come from configuration and from what leaves report, never from a client's text."""
MODEL_REQUESTS = Counter(
    "rootleaf_root_model_requests_total",
    "Per-model requests by the version resolved and how: exact, latest (omitted or unknown "
    "version: the newest bundle version a leaf serves), untrimmed (no allowlist), unserved "
    "(the bundle's version is served by no leaf: not sent); version \"unknown\" until the "
    "partition reports its versions",
    ["model", "version", "decision"],
)
UNSERVED_VERSIONS = Gauge(
    "rootleaf_root_unserved_versions",
    "Versions a model's bundle lists that no leaf of its partition serves yet, newer than every "
    "served one (nonzero during a rollout until the leaves load them; 0 once it completes)",
    ["partition", "model"],
    multiprocess_mode="livemax",  # several workers: the most any live one sees (dead ones dropped)
)
MODEL_SCORE = Histogram(
    "rootleaf_root_model_score",
    "Sampled values of each model's first output (up to SCORE_SAMPLES per result)",
    ["model"],
    buckets=_SCORE_BUCKETS,
)
PARTITION_BYTES = Counter(
    "rootleaf_root_partition_bytes_total",
    "Bytes for each partition: untrimmed (raw, every fetched feature), trimmed (raw), wire (sent)",
    ["partition", "stage"],
)
LEAF_HEDGES = Counter(
    "rootleaf_root_leaf_hedges_total", "Leaf calls sent a second copy to another replica (a slow answer: the hedge delay or the partition timeout)", ["partition"]
)
LEAF_ERRORS = Counter("rootleaf_root_leaf_errors_total", "Failed leaf calls by status code", ["partition", "code"])
CACHE_REQUESTS = Counter(
    "rootleaf_root_cache_requests_total", "Feature cache lookups per (id, feature) cell", ["entity", "result"]
)
FEATURE_STORE_SECONDS = Histogram(
    "rootleaf_root_feature_store_seconds", "Latency of one batched feature-store fetch", buckets=_LATENCY_BUCKETS
)
FEATURE_DEFAULTS = Counter(
    "rootleaf_root_feature_defaults_total", "Entity ids the store did not have (defaults used)", ["entity"]
)
PARTITION_TARGETS = Gauge(
    "rootleaf_root_partition_addresses", "Leaf addresses of a partition (every resolved one) at the last health round",
    ["partition"], multiprocess_mode="livemax",
)
PARTITION_SERVING_TARGETS = Gauge(
    "rootleaf_root_partition_serving_addresses", "Leaf addresses of a partition serving at the last health round",
    ["partition"], multiprocess_mode="livemin",  # several workers: 0 when any live one sees none
)
FEATURE_STORE_READY = Gauge(
    "rootleaf_root_feature_store_ready",
    "1 when the feature store passed its start-up check, 0 when it failed (RootleafFeatureStoreNotReady)",
    multiprocess_mode="livemin",  # several workers: 0 when any live one failed
)
TRIM_ENABLED = Gauge(
    "rootleaf_root_trim_enabled",
    "1 when the root trims features to allowlists (config trim = true), 0 when it sends every feature",
    multiprocess_mode="livemin",
)
FEATURE_STORE_DEGRADED = Counter(
    "rootleaf_root_feature_store_degraded_total",
    "Fetches answered with catalog defaults because the store failed or was slow (on_error = defaults)",
    ["entity", "reason"],
)
MODEL_STAGE_SECONDS = Histogram(
    "rootleaf_root_model_stage_seconds",
    "Per model result, time of its request in a stage: fetch (the request's feature fetch), "
    "leaf (the partition call that answered it); sum over replicas for fleet quantiles",
    ["model", "version", "stage"],
    buckets=_LATENCY_BUCKETS,
)
UNKNOWN_ALLOWLIST_FEATURES = Counter(
    "rootleaf_root_unknown_allowlist_features_total",
    "Allowlisted features neither in the catalog nor supplied by the client (skipped)",
    ["model"],
)
SHADOW_REQUESTS = Counter(
    "rootleaf_root_shadow_requests_total",
    "Score requests mirrored to the canary root ([shadow]): sent, or dropped by the rate or in-flight bound",
    ["outcome"],
)
SHADOW_RESULTS = Counter(
    "rootleaf_root_shadow_results_total",
    "Mirrored results compared with this root's own: match, differ (beyond max_score_diff), "
    "canary_error (the canary failed where this root answered), production_error (not compared)",
    ["model", "outcome"],
)

# Scores observed per model result: prometheus observes one value per call, so observing all
# N candidates would be a per-candidate loop on the hot path; an even stride keeps the shape.
SCORE_SAMPLES = 16


@functools.lru_cache(maxsize=4096)
def child(metric: _Metric, *labels: str) -> _Metric:
    """``metric.labels(*labels)``, kept: the request path labels the same series request
    after request, and ``labels`` costs a lock and a tuple per call. Only for series that
    are never removed (a removed child would keep counting unseen)."""
    return metric.labels(*labels)


def observe_all(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every value of the 1-d array ``values``, in one pass:
    one increment per bucket hit and one of the sum (``observe`` walks the buckets and
    takes two locks per value). For the few sampled scores of a result, plain ``bisect``
    beats numpy's per-call overhead."""
    bounds: Any = getattr(histogram, "_upper_bounds", None)
    buckets: Any = getattr(histogram, "_buckets", None)
    total: Any = getattr(histogram, "_sum", None)
    listed = values.tolist()
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in listed:  # not the layout this was written for: the public way
            histogram.observe(value)
        return
    if not listed:
        return
    histogram._raise_if_not_observable()  # a labelled parent has no buckets of its own
    counts: dict[int, int] = {}
    for value in listed:
        if value == value:  # observe() counts NaN in no bucket (only in the sum)
            # observe() counts a value in the first bucket whose bound is >= it
            index = bisect_left(bounds, value)
            counts[index] = counts.get(index, 0) + 1
    total.inc(sum(listed))
    for index, count in counts.items():
        if index < len(buckets):
            buckets[index].inc(count)
