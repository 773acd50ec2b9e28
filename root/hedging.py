"""Latency-aware target choice and hedged leaf calls, so one slow replica cannot hold a
partition's tail latency hostage.

``TargetLatency`` keeps, per target of one partition, an exponentially weighted mean of the
latency of its answered calls, its recent answered latencies in a ring, and a penalty ``p``
for what answers cannot show: its mean counts ``1 + p`` times. ``FAILURE_PENALTY`` is added
to ``p`` for a call overtaken by its hedge (it would have taken longer still: without this a
slow replica whose calls are all hedged would never show its latency, and keep being
chosen) and for a failed call that says something about the target (``counts_against``:
UNAVAILABLE, RESOURCE_EXHAUSTED, a call the leaf dropped, or a timeout set by the
partition's own timeout rather than the caller's deadline; never a caller's short deadline,
a bad request or a refused version, so no client can steer the choice). A failure is not
counted as a latency: a replica that is down refuses calls within a millisecond, which
would make it look fastest. ``p`` is capped at ``MAX_PENALTY`` and halves every
``PENALTY_HALF_LIFE_S`` and with every answer, so however many failures came before, a
target that answers again wins its share back within seconds, and a replica unlucky once
is not left with a poisoned mean that no answer comes to correct. A call goes to the faster
of two candidate targets (power of two choices on the mean times one plus the calls it has
in flight, so equal replicas share concurrent traffic instead of the one whose last sample
was luckier taking it all); one call in ``EXPLORE_EVERY`` goes to a candidate at random, so
a recovered replica is noticed, but only while the hedge budget could still rescue it
should that replica still be slow.
``hedge_delay_s`` is when a second copy of a still-unanswered call is sent to another
target: the recent ``HEDGE_QUANTILE`` latency of the target with the lowest mean (what the
best replica achieves; the partition-wide quantile would be the slow replica's latency as
soon as it serves more than 5% of calls), at least ``MIN_HEDGE_S``. Leaf
calls are idempotent (scoring), so the first answer wins and the other is cancelled.
Hedges are budgeted: at most ``HEDGE_BUDGET`` of calls (over the last ``WINDOW``) may hedge,
so a partition that is slow everywhere is not sent twice its load. A copy sent because a call
ran past the partition's timeout (``root.leaf_client``) counts here as a hedge but is never
refused by the budget: a spent budget stops hedges, not the copy that keeps a call from
failing at its timeout. State is owned by the
root's event loop (no locks).
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Callable, Sequence

import grpc

__all__ = ["TargetLatency", "counts_against"]

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
FAILURE_PENALTY = 3.0
"""Added to a target's penalty ``p`` per overtaken call and per failure that counts against it."""
MAX_PENALTY = 15.0
"""Cap of ``p``: a target's mean counts at most ``1 + MAX_PENALTY`` times."""
PENALTY_HALF_LIFE_S = 2.0
"""``p`` halves this often (and with every answer)."""
_REPLICA_FAILURES = frozenset({
    grpc.StatusCode.UNAVAILABLE,  # unreachable, or restarting
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # its queue is full
    grpc.StatusCode.CANCELLED,  # the leaf dropped the call (shutting down); ours raise CancelledError
})


def counts_against(code: grpc.StatusCode, own_timeout: bool) -> bool:
    """Whether a call that failed with ``code`` says something about its target;
    ``own_timeout``: the partition's own timeout ended the call, not the caller's deadline."""
    return code in _REPLICA_FAILURES or (code is grpc.StatusCode.DEADLINE_EXCEEDED and own_timeout)


class TargetLatency:
    """Observed latency of one partition's targets; see the module docstring."""

    def __init__(
        self, targets: int, seed: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._mean: list[float | None] = [None] * targets
        self._penalty = [0.0] * targets
        self._penalised_at = [0.0] * targets
        self._clock = clock
        self._in_flight = [0] * targets
        self._recent: list[deque[float]] = [deque(maxlen=WINDOW) for _ in range(targets)]
        self._hedged: deque[bool] = deque(maxlen=WINDOW)
        self._rng = random.Random(seed)
        self._picks = 0
        self._cached_delay: float | None = None
        self.hedges = 0
        """Hedges sent (for metrics and tests)."""

    def mean_s(self, index: int) -> float | None:
        """The target's mean latency as choices see it (its penalty included)."""
        mean = self._mean[index]
        return None if mean is None else mean * (1.0 + self._penalty_now(index))

    def _penalty_now(self, index: int) -> float:
        p = self._penalty[index]
        if p:
            now = self._clock()
            p *= 0.5 ** ((now - self._penalised_at[index]) / PENALTY_HALF_LIFE_S)
            self._penalty[index], self._penalised_at[index] = (p if p > 1e-3 else 0.0), now
        return self._penalty[index]

    def choose(self, pool: Sequence[int]) -> int:
        """The target for a call among ``pool`` (non-empty)."""
        self._picks += 1
        if len(pool) == 1:
            return pool[0]
        a, b = self._rng.sample(list(pool), 2)
        if self._picks % EXPLORE_EVERY == 0 and not self._budget_spent():
            return a
        ma, mb = self.mean_s(a), self.mean_s(b)
        if ma is None or mb is None:  # an untried target gets tried
            return a if ma is None else b
        return a if ma * (1 + self._in_flight[a]) <= mb * (1 + self._in_flight[b]) else b

    def begin(self, index: int) -> None:
        """A call to ``index`` goes out (``end`` when it is over, however it ends)."""
        self._in_flight[index] += 1

    def end(self, index: int) -> None:
        self._in_flight[index] -= 1

    def observe(self, index: int, seconds: float, ok: bool = True, overtaken: bool = False) -> None:
        """A call to ``index`` ended after ``seconds`` (``ok``: it answered; ``overtaken``: it
        was cancelled because its hedge answered first; neither: it failed in a way that
        ``counts_against`` the target: report no other failure)."""
        old = self._mean[index]
        if ok:
            self._penalty[index] = self._penalty_now(index) / 2
            self._mean[index] = seconds if old is None else old + EWMA_ALPHA * (seconds - old)
            self._recent[index].append(seconds)
            self._cached_delay = None
            return
        if old is None:  # no answer yet to compare with: its time, or the others' best mean
            known = [m for m in self._mean if m is not None]
            self._mean[index] = max(seconds, min(known)) if known else seconds
        self._penalty[index] = min(MAX_PENALTY, self._penalty_now(index) + FAILURE_PENALTY)
        self._penalised_at[index] = self._clock()

    def hedge_delay_s(self) -> float | None:
        """When to hedge a call still unanswered; None = do not hedge now (too few samples,
        or the hedge budget is spent)."""
        known = [i for i, m in enumerate(self._mean) if m is not None and len(self._recent[i]) >= MIN_SAMPLES]
        if not known:
            return None
        if self._budget_spent():
            return None
        if self._cached_delay is None:
            best = min(known, key=lambda i: self.mean_s(i) or 0.0)
            ordered = sorted(self._recent[best])
            self._cached_delay = max(MIN_HEDGE_S, ordered[min(len(ordered) - 1, int(HEDGE_QUANTILE * len(ordered)))])
        return self._cached_delay

    def _budget_spent(self) -> bool:
        return sum(self._hedged) >= HEDGE_BUDGET * max(len(self._hedged), MIN_SAMPLES)

    def record_call(self, hedged: bool) -> None:
        """Count one call (and whether it sent a hedge, or a copy at the partition's
        timeout) against the hedge budget."""
        self._hedged.append(hedged)
        if hedged:
            self.hedges += 1
