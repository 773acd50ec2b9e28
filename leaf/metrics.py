"""Prometheus metrics of the leaf, defined once per process (default registry).

Several leaves in one process (tests) share these series; tests compare deltas on a model
name of their own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)
_CANDIDATE_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)
_REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
_SCORE_BUCKETS = tuple(i / 20 for i in range(1, 21))

UNKNOWN_MODEL_LABEL = "_unknown"
"""The ``model`` label of a request refused before its model was resolved (one not hosted:
keeps label sets bounded)."""

REQUESTS = Counter(
    "rootleaf_leaf_requests_total",
    "Score requests by model, serving version and gRPC status code",
    ["model", "version", "code"],
)
REQUEST_SECONDS = Histogram(
    "rootleaf_leaf_request_seconds",
    "Score latency inside the leaf, decode to response",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_CANDIDATES = Histogram(
    "rootleaf_leaf_batch_candidates",
    "Candidates per forward",
    ["model"],
    buckets=_CANDIDATE_BUCKETS,
)
BATCH_REQUESTS = Histogram(
    "rootleaf_leaf_batch_requests",
    "Requests merged into one forward",
    ["model"],
    buckets=_REQUEST_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "rootleaf_leaf_queue_depth",
    "Requests waiting for the inference thread",
    ["model"],
)
INFLIGHT_BYTES = Gauge(
    "rootleaf_leaf_inflight_bytes",
    "Declared bytes (inputs at num_candidates rows) of admitted requests not yet answered",
)
INFLIGHT_BYTES_LIMIT = Gauge(
    "rootleaf_leaf_inflight_bytes_limit",
    "The bound on rootleaf_leaf_inflight_bytes (max_inflight_bytes): beyond it RESOURCE_EXHAUSTED",
)
ADMISSION_REJECTED = Counter(
    "rootleaf_leaf_admission_rejected_total",
    "Requests refused RESOURCE_EXHAUSTED before decoding (reason=queue_full|inflight_bytes)",
    ["reason"],
)
RECEIVED_BYTES = Counter(
    "rootleaf_leaf_received_bytes_total",
    "Request bytes: stage=wire (serialised request), stage=decoded (raw bytes of used features)",
    ["model", "stage"],
)
FORWARD_SECONDS = Histogram(
    "rootleaf_leaf_forward_seconds",
    "Wall time of one forward (batch merge and output split excluded)",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
FORWARD_CPU_SECONDS = Counter(
    "rootleaf_leaf_forward_cpu_seconds_total",
    "CPU time of the inference thread inside forward (intra-op helper threads excluded)",
    ["model"],
)
STAGE_SECONDS = Histogram(
    "rootleaf_leaf_stage_seconds",
    "Time of each request in a stage, by model version: queue (submitted until its batch "
    "starts), forward (its batch's forward); sum over replicas for fleet quantiles",
    ["model", "version", "stage"],
    buckets=_LATENCY_BUCKETS,
)
MODEL_LOADS = Counter(
    "rootleaf_leaf_model_loads_total",
    "Model version loads by result (ok|error)",
    ["model", "result"],
)
LOADED_VERSIONS = Gauge(
    "rootleaf_leaf_loaded_versions",
    "Versions currently loaded per model",
    ["model"],
)


class _BulkHistogram:
    """A histogram observed a whole array at a time (numpy), exported as a Prometheus
    histogram. ``prometheus_client.Histogram`` takes one value per call, which would put a
    per-candidate Python loop on the hot path. Updated by the inference thread; collected by
    the metrics HTTP thread; a lock guards both."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self._name = name
        self._doc = documentation
        self._labelnames = labelnames
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], tuple[np.ndarray, list[float]]] = {}

    def observe_many(self, labels: tuple[str, ...], values: np.ndarray) -> None:
        # Counts per bucket upper bound (le), plus the +Inf bucket; NaN goes to +Inf only.
        idx = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(idx, minlength=len(self._bounds) + 1)
        finite = values[np.isfinite(values)]
        total = float(finite.sum()) if finite.size else 0.0
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = (np.zeros(len(self._bounds) + 1, dtype=np.int64), [0.0])
                self._series[labels] = series
            series[0][:] += counts[: len(self._bounds) + 1]
            series[1][0] += total

    def sample(self, labels: tuple[str, ...]) -> tuple[int, float]:
        """(count, sum) of one series (tests and benchmarks)."""
        with self._lock:
            series = self._series.get(labels)
            return (0, 0.0) if series is None else (int(series[0].sum()), series[1][0])

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self._name, self._doc, labels=list(self._labelnames))]

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=list(self._labelnames))
        with self._lock:
            items = [(k, v[0].copy(), v[1][0]) for k, v in self._series.items()]
        for labels, counts, total in items:
            cumulative = np.cumsum(counts)
            buckets = [(_fmt(b), float(c)) for b, c in zip(self._bounds, cumulative[:-1])]
            buckets.append(("+Inf", float(cumulative[-1])))
            family.add_metric(list(labels), buckets, total)
        return [family]


def _fmt(bound: float) -> str:
    return repr(float(bound))


SCORE = _BulkHistogram(
    "rootleaf_leaf_score",
    "Values of each model's first output",
    ("model", "version"),
    _SCORE_BUCKETS,
)
REGISTRY.register(SCORE)


@dataclass(frozen=True, slots=True)
class VersionSeries:
    """The series the inference thread updates per batch for one model version, looked up
    once (``labels()`` takes a lock and builds a key on every call)."""

    score_labels: tuple[str, str]
    forward_cpu: Counter
    forward_seconds: Histogram
    batch_candidates: Histogram
    batch_requests: Histogram
    queue_stage: Histogram
    forward_stage: Histogram

    @classmethod
    def of(cls, model: str, version: str) -> "VersionSeries":
        return cls(
            (model, version),
            FORWARD_CPU_SECONDS.labels(model),
            FORWARD_SECONDS.labels(model),
            BATCH_CANDIDATES.labels(model),
            BATCH_REQUESTS.labels(model),
            STAGE_SECONDS.labels(model, version, "queue"),
            STAGE_SECONDS.labels(model, version, "forward"),
        )
