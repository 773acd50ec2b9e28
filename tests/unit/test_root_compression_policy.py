"""``compression = "auto"``: LZ4 for a partition when the link bounds and not the CPU; the
estimates are refreshed by requests packed both ways; and a root on ``auto`` scores as the
fixed settings do."""

from __future__ import annotations

import asyncio
import time
from typing import Iterator

import grpc
import pytest

from root.compression_policy import CPU_WINDOW, AutoCompression
from root.config import RootConfig
from trimmer import FeatureTrimmer
from root.catalog import FeatureCatalog
from tests.unit.test_root_scoring import Leaf, _engine, _input, setup  # noqa: F401  (fixture)
from wire.codec import Compression, decode_all


def _policy(link_gbps: float, raw: int, lz4: int, lz4_cpu_s: float, cpu_s: float) -> AutoCompression:
    policy = AutoCompression(link_gbps)
    assert policy.choose("p") == (Compression.NONE, True)  # nothing known yet: measure both ways
    policy.observe("p", raw, lz4, lz4_cpu_s)
    # The CPU per request as measured over a window: here set by the window's own length.
    started = time.process_time()
    while time.process_time() - started < cpu_s * CPU_WINDOW:
        pass
    for _ in range(CPU_WINDOW):
        policy.request_done()
    return policy


def test_a_slow_link_compresses_and_a_fast_one_does_not() -> None:
    # 1 MB raw, 300 KB with LZ4 (1 ms of CPU); the rest of a request ~2 ms of CPU.
    slow = _policy(0.5, 1_000_000, 300_000, 0.001, 0.002)  # 16 ms on the link raw: it bounds
    assert slow.compressing() == {"p": True}
    assert slow.choose("p")[0] is Compression.LZ4
    fast = _policy(100.0, 1_000_000, 300_000, 0.001, 0.002)  # 0.08 ms on the link: the CPU bounds
    assert fast.compressing() == {"p": False}
    assert fast.choose("p")[0] is Compression.NONE


def test_without_a_link_speed_nothing_is_compressed() -> None:
    policy = _policy(0.0, 1_000_000, 1_000, 0.0001, 0.002)
    assert policy.compressing() == {"p": False}


def test_lz4_that_saves_nothing_is_not_used() -> None:
    policy = _policy(0.01, 1_000_000, 1_000_000, 0.001, 0.002)
    assert policy.compressing() == {"p": False}


def test_one_request_in_sample_every_is_packed_both_ways() -> None:
    policy = AutoCompression(1.0, sample_every=4)
    assert policy.choose("p")[1] and policy.choose("p")[1]  # until a sample is observed
    policy.observe("p", 100, 50, 0.0)
    assert [policy.choose("p")[1] for _ in range(8)] == [False, False, False, True] * 2


def test_auto_rejects_a_negative_link() -> None:
    with pytest.raises(ValueError):
        AutoCompression(-1.0)


@pytest.mark.parametrize("link_gbps", [0.0, 1e-6, 100.0])
def test_a_root_on_auto_scores_as_fixed_settings_do(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer], link_gbps: float  # noqa: F811
) -> None:
    def scores(**overrides: object) -> list[dict[str, object]]:
        engine = _engine(setup, Leaf(), Leaf(), max_in_flight=4, **overrides)
        outs = []
        for _ in range(6):  # past the first (both-ways) request of each partition
            outcomes = asyncio.run(engine.score(_input()))
            assert all(o.error_code is grpc.StatusCode.OK for o in outcomes)
            outs.append({o.model: decode_all(o.outputs)["score"].tolist() for o in outcomes})
        return outs

    assert scores(compression="auto", link_gbps=link_gbps) == scores(compression="lz4") == scores(compression="none")
