"""Latency-aware target choice and hedged leaf calls, so one slow replica cannot hold a
partition's tail latency hostage.

``TargetLatency`` keeps, per target of one partition, an exponentially weighted mean of the
latency of its recent calls and its recent answered latencies in a ring. A call overtaken
by its hedge counts as ``PENALTY`` times the time it had taken, since it would have taken
longer still: without it a slow replica whose calls are all hedged looks as fast as the
hedge delay, and keeps being chosen. A call that failed counts as ``PENALTY`` times the
longer of its time and the target's mean: a replica that is down refuses calls within a
millisecond, and counting that time would make it the fastest target, so that every call
went to it the moment it came back, slow or not. A
call goes to the faster of two candidate targets (power of two choices on the mean); one
call in ``EXPLORE_EVERY`` goes to a candidate at random, so a recovered replica is noticed,
but only while the hedge budget could still rescue it should that replica still be slow.
``hedge_delay_s`` is when a second copy of a still-unanswered call is sent to another
target: the recent ``HEDGE_QUANTILE`` latency of the target with the lowest mean (what the
best replica achieves; the partition-wide quantile would be the slow replica's latency as
soon as it serves more than 5% of calls), at least ``MIN_HEDGE_S``. Leaf
calls are idempotent (scoring), so the first answer wins and the other is cancelled.
Hedges are budgeted: at most ``HEDGE_BUDGET`` of calls (over the last ``WINDOW``) may hedge,
so a partition that is slow everywhere is not sent twice its load. State is owned by the
root's event loop (no locks).
"""

from __future__ import annotations

import random
from collections import deque
from typing import Sequence

__all__ = ["TargetLatency"]

EWMA_ALPHA = 0.2
"""Weight of the newest call in a target's mean latency."""
EXPLORE_EVERY = 32
"""One pick in this many ignores the means (keeps a recovered target's mean fresh)."""
WINDOW = 512
"""Recent calls remembered (per target: latency ring; per partition: hedge budget)."""
HEDGE_QUANTILE = 0.95
MIN_HEDGE_S = 0.010
HEDGE_BUDGET = 0.15
"""Largest share of recent calls that may send a hedge."""
MIN_SAMPLES = 20
"""Calls seen before hedging starts (the quantile needs a few)."""
PENALTY = 4.0
"""How much longer than it took an overtaken call counts (a failed one: than the mean)."""


class TargetLatency:
    """Observed latency of one partition's targets; see the module docstring."""

    def __init__(self, targets: int, seed: int | None = None) -> None:
        self._mean: list[float | None] = [None] * targets
        self._recent: list[deque[float]] = [deque(maxlen=WINDOW) for _ in range(targets)]
        self._hedged: deque[bool] = deque(maxlen=WINDOW)
        self._rng = random.Random(seed)
        self._picks = 0
        self._cached_delay: float | None = None
        self.hedges = 0
        """Hedges sent (for metrics and tests)."""

    def mean_s(self, index: int) -> float | None:
        return self._mean[index]

    def choose(self, pool: Sequence[int]) -> int:
        """The target for a call among ``pool`` (non-empty)."""
        self._picks += 1
        if len(pool) == 1:
            return pool[0]
        a, b = self._rng.sample(list(pool), 2)
        if self._picks % EXPLORE_EVERY == 0 and not self._budget_spent():
            return a
        ma, mb = self._mean[a], self._mean[b]
        if ma is None or mb is None:  # an untried target gets tried
            return a if ma is None else b
        return a if ma <= mb else b

    def observe(self, index: int, seconds: float, ok: bool = True, overtaken: bool = False) -> None:
        """A call to ``index`` ended after ``seconds`` (``ok``: it answered; ``overtaken``: it
        was cancelled because its hedge answered first)."""
        old = self._mean[index]
        if overtaken:
            seconds *= PENALTY
        elif not ok:
            seconds = PENALTY * max(seconds, old or 0.0)
        self._mean[index] = seconds if old is None else old + EWMA_ALPHA * (seconds - old)
        if ok:
            self._recent[index].append(seconds)
            self._cached_delay = None

    def hedge_delay_s(self) -> float | None:
        """When to hedge a call still unanswered; None = do not hedge now (too few samples,
        or the hedge budget is spent)."""
        known = [i for i, m in enumerate(self._mean) if m is not None and len(self._recent[i]) >= MIN_SAMPLES]
        if not known:
            return None
        if self._budget_spent():
            return None
        if self._cached_delay is None:
            best = min(known, key=lambda i: self._mean[i] or 0.0)
            ordered = sorted(self._recent[best])
            self._cached_delay = max(MIN_HEDGE_S, ordered[min(len(ordered) - 1, int(HEDGE_QUANTILE * len(ordered)))])
        return self._cached_delay

    def _budget_spent(self) -> bool:
        return sum(self._hedged) >= HEDGE_BUDGET * max(len(self._hedged), MIN_SAMPLES)

    def record_call(self, hedged: bool) -> None:
        """Count one call (and whether it sent a hedge) against the hedge budget."""
        self._hedged.append(hedged)
        if hedged:
            self.hedges += 1
