"""``compression = "auto"``: per partition, LZ4 when the link bounds and not the CPU.

A partition call costs the root CPU (fetch, pack, gRPC: ``cpu_s`` per request, measured)
and link time (its bytes over ``link_gbps``, the root's egress toward its leaves). Packed
with LZ4 it costs ``lz4_cpu_s`` more CPU and ``raw - lz4`` bytes less link time. The root's
throughput is bounded by the busier of the two, so a partition is compressed when

    max(link_s - saved_s, cpu_s + lz4_cpu_s) < max(link_s, cpu_s)

with ``link_s`` the link time per request of every partition as currently sent. Without a
``link_gbps`` the link is taken never to bound (loopback, or a NIC nobody sized): nothing is
compressed; nor is anything before the first CPU estimate (``FIRST_CPU_WINDOW`` requests). The estimates are exponential averages: bytes of both encodings and LZ4's CPU
from the requests packed both ways (the first of each partition, then one in
``sample_every``), CPU per request from the scorer's process CPU over windows of requests.
Owned by the encode path of one scorer (the event loop or its encode threads: a lock).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from wire.codec import Compression

SAMPLE_EVERY = 32
"""One request in this many (per partition) is packed both ways to refresh the estimates."""
CPU_WINDOW = 64
"""Requests per window of the CPU-per-request estimate."""
FIRST_CPU_WINDOW = 8
"""Requests of the first window: nothing is compressed before it ends (which resource
bounds is not known before the CPU per request is)."""
WEIGHT = 0.2
"""Weight of a new observation in the averages."""


@dataclass(slots=True)
class _Partition:
    raw_bytes: float = 0.0
    lz4_bytes: float = 0.0
    lz4_cpu_s: float = 0.0
    samples: int = 0
    since_sample: int = 0
    compress: bool = False


def _average(old: float, new: float, first: bool) -> float:
    return new if first else (1 - WEIGHT) * old + WEIGHT * new


class AutoCompression:
    """Chooses LZ4 or none per partition (see the module docstring)."""

    def __init__(self, link_gbps: float, sample_every: int = SAMPLE_EVERY) -> None:
        if link_gbps < 0 or sample_every < 1:
            raise ValueError(f"link_gbps must be >= 0 and sample_every >= 1, got {link_gbps}, {sample_every}")
        self._link_bytes_per_s = link_gbps * 1e9 / 8
        self._sample_every = sample_every
        self._lock = threading.Lock()
        self._partitions: dict[str, _Partition] = {}
        self._cpu_s = 0.0
        self._window_cpu = time.process_time()
        self._window_requests = 0
        self._windows = 0

    def choose(self, partition: str) -> tuple[Compression, bool]:
        """This request's encoding for ``partition`` and whether to measure both encodings."""
        with self._lock:
            state = self._partitions.setdefault(partition, _Partition())
            state.since_sample += 1
            sample = state.samples == 0 or state.since_sample >= self._sample_every
            if sample:
                state.since_sample = 0
            return (Compression.LZ4 if state.compress else Compression.NONE), sample

    def request_done(self) -> None:
        """Count a request toward the CPU-per-request window."""
        with self._lock:
            self._window_requests += 1
            if self._window_requests < (CPU_WINDOW if self._windows else FIRST_CPU_WINDOW):
                return
            now = time.process_time()
            per_request = (now - self._window_cpu) / self._window_requests
            self._cpu_s = _average(self._cpu_s, per_request, self._windows == 0)
            self._windows += 1
            self._window_cpu, self._window_requests = now, 0
            self._decide()

    def observe(self, partition: str, raw_bytes: int, lz4_bytes: int, lz4_cpu_s: float) -> None:
        """A request packed both ways: its bytes each way and the CPU LZ4 added."""
        with self._lock:
            state = self._partitions.setdefault(partition, _Partition())
            first = state.samples == 0
            state.raw_bytes = _average(state.raw_bytes, raw_bytes, first)
            state.lz4_bytes = _average(state.lz4_bytes, lz4_bytes, first)
            state.lz4_cpu_s = _average(state.lz4_cpu_s, max(lz4_cpu_s, 0.0), first)
            state.samples += 1
            self._decide()

    def _decide(self) -> None:
        if not self._link_bytes_per_s or not self._windows:
            for state in self._partitions.values():
                state.compress = False
            return
        per_s = self._link_bytes_per_s
        for state in self._partitions.values():
            if not state.samples:
                continue
            link_s = sum(
                (s.lz4_bytes if s.compress else s.raw_bytes) / per_s for s in self._partitions.values() if s.samples
            )
            cpu_s = self._cpu_s - (state.lz4_cpu_s if state.compress else 0.0)
            if state.compress:
                link_s += (state.raw_bytes - state.lz4_bytes) / per_s
            saved_s = (state.raw_bytes - state.lz4_bytes) / per_s
            state.compress = max(link_s - saved_s, cpu_s + state.lz4_cpu_s) < max(link_s, cpu_s)

    def compressing(self) -> dict[str, bool]:
        """Each partition's current choice (metrics, tests)."""
        with self._lock:
            return {name: state.compress for name, state in self._partitions.items()}
