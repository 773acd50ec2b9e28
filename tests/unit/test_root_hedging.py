"""Latency-aware target choice and the hedge policy (pure state, no sockets)."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest

from root.hedging import (
    EXPLORE_EVERY, FAILURE_PENALTY, HEDGE_BUDGET, MAX_PENALTY, MIN_HEDGE_S, MIN_SAMPLES, PENALTY_HALF_LIFE_S,
    TargetLatency, counts_against,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_faster_of_two_targets_gets_all_but_the_exploring_picks() -> None:
    latency = TargetLatency(2, seed=1)
    latency.observe(0, 0.500)  # slow
    latency.observe(1, 0.010)
    picks = Counter(latency.choose([0, 1]) for _ in range(EXPLORE_EVERY * 20))
    assert picks[0] <= 20 and picks[1] >= EXPLORE_EVERY * 20 - 20
    assert picks[0] > 0  # the slow one is still tried now and then, so its recovery shows


def test_an_untried_target_is_tried_and_a_recovered_one_wins_back() -> None:
    latency = TargetLatency(2, seed=2)
    latency.observe(0, 0.010)
    assert latency.choose([0, 1]) == 1
    latency.observe(1, 0.900)
    for _ in range(30):
        latency.observe(1, 0.005)  # recovered: its mean follows within a few calls
    assert latency.mean_s(1) is not None and latency.mean_s(1) < latency.mean_s(0)  # type: ignore[operator]


def test_hedge_delay_is_the_recent_p95_and_the_budget_caps_hedges() -> None:
    latency = TargetLatency(2, seed=3)
    assert latency.hedge_delay_s() is None  # too few samples yet
    for i in range(100):
        latency.observe(i % 2, 0.020 + 0.001 * i)
    delay = latency.hedge_delay_s()
    assert delay is not None and 0.110 <= delay <= 0.120
    for _ in range(100):
        latency.record_call(hedged=False)
    allowed = 0
    for _ in range(100):
        if latency.hedge_delay_s() is not None:
            latency.record_call(hedged=True)
            allowed += 1
        else:
            latency.record_call(hedged=False)
    assert 0 < allowed <= HEDGE_BUDGET * 200 + 1


def test_hedge_delay_has_a_floor() -> None:
    latency = TargetLatency(2)
    for _ in range(MIN_SAMPLES):
        latency.observe(0, 0.0001)
    assert latency.hedge_delay_s() == MIN_HEDGE_S


def test_a_replica_whose_calls_are_overtaken_stops_being_chosen() -> None:
    """All of a slow replica's calls are cancelled at the hedge delay, so it never reports its
    real latency; overtaken calls count extra, or it would look as fast as the delay."""
    latency = TargetLatency(2, seed=4)
    for _ in range(10):
        latency.observe(0, 0.020)
        latency.observe(1, 0.020)
    for _ in range(3):
        latency.observe(1, 0.030, ok=False, overtaken=True)
    picks = Counter(latency.choose([0, 1]) for _ in range(EXPLORE_EVERY * 4))
    assert picks[1] <= 4


def test_hedge_delay_follows_the_best_replica_not_the_slow_one() -> None:
    latency = TargetLatency(2, seed=5)
    for _ in range(100):
        latency.observe(0, 0.012)
        latency.observe(1, 0.300)  # half the partition's answers are slow
    assert latency.hedge_delay_s() == 0.012


def test_a_replica_that_refuses_calls_fast_does_not_become_the_fastest() -> None:
    """A replica that is down fails its calls within a millisecond; counted as their time, it
    would look fastest and take every call the moment it came back (slow or not)."""
    latency = TargetLatency(2, seed=6)
    for _ in range(10):
        latency.observe(0, 0.040)
        latency.observe(1, 0.040)
    means: list[float] = []
    for _ in range(3):
        latency.observe(1, 0.0005, ok=False)  # connection refused
        means.append(latency.mean_s(1) or 0.0)
    assert means == sorted(means) and means[0] > 0.040  # each failure raises its mean
    picks = Counter(latency.choose([0, 1]) for _ in range(EXPLORE_EVERY * 4))
    assert picks[1] <= 4  # only the exploring picks
    for _ in range(30):
        latency.observe(1, 0.030)  # back and fast: it wins back within a few calls
    assert latency.mean_s(1) < latency.mean_s(0)  # type: ignore[operator]


def test_a_failure_before_any_answer_counts_its_own_time_penalised() -> None:
    latency = TargetLatency(1, clock=Clock())
    latency.observe(0, 0.5, ok=False)
    assert latency.mean_s(0) == 0.5 * (1 + FAILURE_PENALTY)


def test_the_failure_penalty_is_capped_and_decays_with_time_and_answers() -> None:
    clock = Clock()
    latency = TargetLatency(2, seed=8, clock=clock)
    for _ in range(10):
        latency.observe(0, 0.010)
        latency.observe(1, 0.010)
    for _ in range(1000):  # however many failures: at most 1 + MAX_PENALTY times the mean
        latency.observe(1, 0.001, ok=False)
    assert latency.mean_s(1) == pytest.approx(0.010 * (1 + MAX_PENALTY))
    clock.now += PENALTY_HALF_LIFE_S
    assert latency.mean_s(1) == pytest.approx(0.010 * (1 + MAX_PENALTY / 2))
    clock.now += 10 * PENALTY_HALF_LIFE_S  # no calls at all: the penalty is gone by itself
    assert latency.mean_s(1) == pytest.approx(0.010, rel=0.02)
    for _ in range(1000):
        latency.observe(1, 0.001, ok=False)
    for _ in range(12):  # and answers halve it, each
        latency.observe(1, 0.010)
    assert latency.mean_s(1) == pytest.approx(0.010, rel=0.01)


@pytest.mark.parametrize(
    ("code", "own_timeout", "counts"),
    [
        (grpc.StatusCode.UNAVAILABLE, False, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, False, True),
        (grpc.StatusCode.CANCELLED, False, True),  # the leaf dropped the call
        (grpc.StatusCode.DEADLINE_EXCEEDED, True, True),  # the partition's own timeout
        (grpc.StatusCode.DEADLINE_EXCEEDED, False, False),  # the caller's deadline
        (grpc.StatusCode.INVALID_ARGUMENT, False, False),
        (grpc.StatusCode.FAILED_PRECONDITION, False, False),
        (grpc.StatusCode.INTERNAL, True, False),
    ],
)
def test_only_failures_that_say_something_about_the_replica_count(
    code: grpc.StatusCode, own_timeout: bool, counts: bool
) -> None:
    assert counts_against(code, own_timeout) is counts


def test_no_exploring_pick_goes_out_once_the_hedge_budget_is_spent() -> None:
    """An exploring call to a slow replica needs a hedge to be rescued: none without one."""
    latency = TargetLatency(2, seed=7)
    for _ in range(MIN_SAMPLES):
        latency.observe(0, 0.020)
        latency.observe(1, 2.000)
    for _ in range(MIN_SAMPLES):
        latency.record_call(hedged=True)  # every recent call hedged: the budget is spent
    assert latency.hedge_delay_s() is None
    picks = Counter(latency.choose([0, 1]) for _ in range(EXPLORE_EVERY * 4))
    assert picks[1] == 0
    for _ in range(10 * MIN_SAMPLES):
        latency.record_call(hedged=False)  # budget back: exploring resumes
    picks = Counter(latency.choose([0, 1]) for _ in range(EXPLORE_EVERY * 4))
    assert 0 < picks[1] <= 4


def test_calls_in_flight_spill_concurrent_traffic_to_an_equal_replica() -> None:
    """The mean alone sends every call to whichever of two equal replicas sampled luckier."""
    latency = TargetLatency(2, seed=9)
    latency.observe(0, 0.020)
    latency.observe(1, 0.021)
    assert latency.choose([0, 1]) == 0  # pick 1 of EXPLORE_EVERY: none of these explores
    latency.begin(0)  # one call out on replica 0: 0.040 against 0.021
    assert {latency.choose([0, 1]) for _ in range(EXPLORE_EVERY - 3)} == {1}
    latency.end(0)
    assert latency.choose([0, 1]) == 0
