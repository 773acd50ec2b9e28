"""Prometheus text scraping for canary analysis: snapshots, window deltas, histogram quantiles.

A ``Snapshot`` maps (sample name, sorted labels) to a value, parsed with
``prometheus_client.parser``. Deltas of two snapshots give the counters and histogram buckets
of one analysis window. Scraping is blocking HTTP; callers run it in a thread.
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass
from typing import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]
MAX_SCRAPE_BYTES = 32 * 1024 * 1024


class ScrapeError(RuntimeError):
    """A metrics endpoint could not be read or parsed."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All samples of one scrape."""

    samples: Mapping[Key, float]

    def select(self, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Samples named ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return {lab: v for (n, lab), v in self.samples.items() if n == name and want <= set(lab)}

    def total(self, name: str, **labels: str) -> float:
        return float(sum(self.select(name, **labels).values()))

    def by_label(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """``name`` summed per value of ``label`` (among samples whose labels include ``labels``)."""
        out: dict[str, float] = {}
        for lab, value in self.select(name, **labels).items():
            key = dict(lab).get(label, "")
            out[key] = out.get(key, 0.0) + value
        return out


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Several endpoints' samples as one (the same series from two endpoints are summed)."""
    samples: dict[Key, float] = {}
    for snap in snapshots:
        for key, value in snap.samples.items():
            samples[key] = samples.get(key, 0.0) + value
    return Snapshot(samples)


def parse(text: str) -> Snapshot:
    samples: dict[Key, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    except ValueError as exc:
        raise ScrapeError(f"cannot parse metrics ({exc})") from None
    return Snapshot(samples)


def scrape(url: str, timeout_s: float = 5.0) -> Snapshot:
    """GET and parse one Prometheus text endpoint."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read(MAX_SCRAPE_BYTES + 1)
    except OSError as exc:
        raise ScrapeError(f"{url}: {exc}") from None
    if len(body) > MAX_SCRAPE_BYTES:
        raise ScrapeError(f"{url}: response larger than {MAX_SCRAPE_BYTES} bytes")
    return parse(body.decode("utf-8", errors="replace"))


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    """Per-sample ``after - before`` (a counter reset makes ``after`` the window's value)."""
    out: dict[Key, float] = {}
    for key, value in after.samples.items():
        prev = before.samples.get(key, 0.0)
        out[key] = value - prev if value >= prev else value
    return Snapshot(out)


def histogram_quantile(snap: Snapshot, name: str, q: float, **labels: str) -> float | None:
    """The q-quantile of histogram ``name`` (summed over other labels), interpolated within
    the bucket as Prometheus does; None when the window holds no observation."""
    buckets: dict[float, float] = {}
    for lab, value in snap.select(f"{name}_bucket", **labels).items():
        le = dict(lab)["le"]
        bound = math.inf if le in ("+Inf", "inf") else float(le)
        buckets[bound] = buckets.get(bound, 0.0) + value
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # beyond the last finite bucket: its upper bound
            span = count - prev_count
            frac = (rank - prev_count) / span if span > 0 else 1.0
            return prev_bound + (bound - prev_bound) * frac
        prev_bound, prev_count = bound, count
    return prev_bound
