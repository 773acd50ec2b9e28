"""The per-partition timeout: how long one attempt of a leaf partition call may take, on the
partition's own terms, however long the client's deadline.

The rule, decided here and nowhere else: ``p99_multiple`` times the p99 of the partition's
last ``WINDOW`` answered attempts, clamped to ``[floor_ms, cap_ms]``
(``root.config.PartitionTimeoutConfig``); ``cap_ms`` until ``MIN_SAMPLES`` attempts have
answered. An attempt gets the smaller of that and what the caller's deadline leaves
(``attempt_deadline``). Only an attempt that runs past this timeout (not the caller's
deadline) counts against its replica; it then runs on while a copy goes to another replica
that has every named version, or, with none, ends there, so a hung leaf costs a request
this long, not the client's whole deadline (``root.leaf_client``, ``GrpcLeafClient._call``).

Attempts that never answer never enter the window (how long they would have taken is unknown),
so a partition that turned slower than its timeout for good would otherwise time out for
ever: one attempt in ``PROBE_EVERY`` gets ``cap_ms`` instead, and once a few of those answer
the p99 (and the timeout) follow the new latency. State is owned by the root's event loop.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from dataclasses import dataclass

from root.config import PartitionTimeoutConfig

__all__ = ["Attempt", "PartitionTimeout"]

WINDOW = 256
"""Answered attempts remembered."""
MIN_SAMPLES = 20
"""Answered attempts before the timeout follows the p99 (until then: ``cap_ms``)."""
QUANTILE = 0.99
PROBE_EVERY = 32
"""One attempt in this many gets ``cap_ms`` (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """When one attempt must end, and whether the partition's own timeout set that."""

    deadline: float
    """``time.monotonic()`` value."""
    own: bool
    """True: the partition's timeout ends it before the caller's deadline would."""

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class PartitionTimeout:
    """The timeout of one partition's attempts; see the module docstring."""

    def __init__(self, config: PartitionTimeoutConfig = PartitionTimeoutConfig()) -> None:
        self.config = config
        self._answered: deque[float] = deque(maxlen=WINDOW)
        self._cached: float | None = None
        self._attempts = 0

    def observe(self, seconds: float) -> None:
        """An attempt was answered after ``seconds`` (a failed one says nothing about when it
        would have answered)."""
        self._answered.append(seconds)
        self._cached = None

    def timeout_s(self) -> float:
        """The partition's timeout now (without the probe rule)."""
        cfg = self.config
        if len(self._answered) < MIN_SAMPLES:
            return cfg.cap_ms / 1000.0
        if self._cached is None:
            n = len(self._answered)
            p99 = heapq.nlargest(n - int(QUANTILE * n), self._answered)[-1]  # O(n), not a sort
            self._cached = min(max(cfg.p99_multiple * p99, cfg.floor_ms / 1000.0), cfg.cap_ms / 1000.0)
        return self._cached

    def attempt_deadline(self, caller_deadline: float) -> Attempt:
        """The end of the next attempt: the partition's timeout from now, or the caller's
        deadline (``time.monotonic()`` value) when that comes first."""
        self._attempts += 1
        probe = self._attempts % PROBE_EVERY == 0
        own = time.monotonic() + (self.config.cap_ms / 1000.0 if probe else self.timeout_s())
        return Attempt(own, True) if own < caller_deadline else Attempt(caller_deadline, False)
