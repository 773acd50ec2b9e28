"""The per-partition timeout rule (pure state, no sockets)."""

from __future__ import annotations

import time

import pytest

from root.config import PartitionTimeoutConfig
from root.partition_timeout import MIN_SAMPLES, PROBE_EVERY, WINDOW, PartitionTimeout

CONFIG = PartitionTimeoutConfig(p99_multiple=4.0, floor_ms=100, cap_ms=2000)


def test_the_cap_until_enough_answers_then_a_multiple_of_the_p99() -> None:
    timeout = PartitionTimeout(CONFIG)
    for _ in range(MIN_SAMPLES - 1):
        timeout.observe(0.050)
    assert timeout.timeout_s() == 2.0
    timeout.observe(0.050)
    assert timeout.timeout_s() == pytest.approx(0.200)
    for i in range(WINDOW):  # 1 .. 256 ms: the p99 of the window is 254 ms
        timeout.observe((i + 1) / 1000)
    assert timeout.timeout_s() == pytest.approx(4 * 0.254)


def test_the_floor_and_the_cap_bound_it() -> None:
    timeout = PartitionTimeout(CONFIG)
    for _ in range(WINDOW):
        timeout.observe(0.001)
    assert timeout.timeout_s() == 0.100
    for _ in range(WINDOW):
        timeout.observe(5.0)
    assert timeout.timeout_s() == 2.0


def test_an_attempt_ends_with_the_partition_timeout_or_the_callers_deadline() -> None:
    timeout = PartitionTimeout(CONFIG)
    for _ in range(MIN_SAMPLES):
        timeout.observe(0.010)
    now = time.monotonic()
    far = timeout.attempt_deadline(now + 30.0)
    assert far.own and far.deadline < now + 1.0
    near = timeout.attempt_deadline(now + 0.05)
    assert not near.own and near.deadline == now + 0.05


def test_one_attempt_in_probe_every_gets_the_cap() -> None:
    """Timed-out attempts never enter the window: without probes a partition that turned
    slower than its timeout would time out for ever."""
    timeout = PartitionTimeout(CONFIG)
    for _ in range(MIN_SAMPLES):
        timeout.observe(0.010)
    caller = time.monotonic() + 60.0
    ends = [timeout.attempt_deadline(caller).deadline - time.monotonic() for _ in range(4 * PROBE_EVERY)]
    long = [e for e in ends if e > 1.0]
    assert len(long) == 4 and all(e <= 2.0 for e in long)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"floor_ms": 0}, "floor_ms"), ({"cap_ms": 50, "floor_ms": 100}, "cap_ms"),
     ({"p99_multiple": 0.5}, "p99_multiple"), ({"p99_multiple": True}, "p99_multiple")],
)
def test_config_names_the_bad_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PartitionTimeoutConfig(**kwargs)  # type: ignore[arg-type]
