"""The root's metric helpers: bulk histogram observation and kept label children."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from root import metrics


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize(
    "values",
    [
        np.array([0.0, 0.05, 0.051, 0.5, 0.999, 1.0, 1.5, -3.0], np.float32),
        np.linspace(0, 1, 16, dtype=np.float64),
        np.array([], np.float32),
        np.array([np.inf, 0.25], np.float32),
        np.array([np.nan, 0.25], np.float32),
    ],
)
def test_observe_all_equals_observing_one_by_one(values: np.ndarray) -> None:
    buckets = tuple(i / 20 for i in range(1, 21))
    one = Histogram("h", "h", ["model"], buckets=buckets, registry=CollectorRegistry())
    bulk = Histogram("h", "h", ["model"], buckets=buckets, registry=CollectorRegistry())
    series = one.labels("m")
    for value in values.tolist():
        series.observe(value)
    metrics.observe_all(bulk.labels("m"), values)
    expected, got = _samples(one), _samples(bulk)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(value) and math.isnan(got[key])), key


def test_observe_all_refuses_a_labelled_parent_like_observe() -> None:
    histogram = Histogram("h", "h", ["model"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        metrics.observe_all(histogram, np.array([0.5]))


def test_child_is_the_labelled_series_kept() -> None:
    counter = Counter("c", "c", ["a", "b"], registry=CollectorRegistry())
    metrics.child(counter, "x", "y").inc(2)
    metrics.child(counter, "x", "y").inc()
    assert metrics.child(counter, "x", "y") is counter.labels("x", "y")
    assert counter.labels("x", "y")._value.get() == 3
    assert metrics.child(counter, "x", "z") is not metrics.child(counter, "x", "y")
