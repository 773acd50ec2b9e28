"""What a partition call does when a copy runs out of the partition's timeout: with another
replica that has every named version, the copy keeps running and a second copy goes there
(the first answer wins); with none, the call ends at the partition's timeout. Real leaves on
loopback with injected delays, ``GrpcLeafClient`` as the root uses it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import AsyncIterator

import grpc
import pytest

from harness.leaf_hooks import DelayInterceptor, ObservedRequest
from leaf.config import LeafConfig
from protos.rootleaf.v1 import leaf_pb2
from root.config import PartitionTimeoutConfig
from root.errors import LeafCallError
from root.leaf_client import GrpcLeafClient
from tests.service.test_leaf_partition import NAMES, partition_request
from tests.service.test_leaf_server import Leaf, export_demo, features, run, sample

N = 4
TIMEOUT = PartitionTimeoutConfig(floor_ms=200, cap_ms=200)
"""A fixed partition timeout, far below the slow replica's delay."""
SLOW_MS = 800.0
"""The slow replica answers this long after a call (an injected sleep: never sooner), well
after the partition's timeout and well before the caller's deadline."""
FROZEN_MS = 120_000.0
"""The frozen replica answers nothing within any deadline here."""
DEADLINE_S = 8.0
HEDGES = "rootleaf_root_leaf_hedges_total"


def payload(rid: str) -> bytes:
    return partition_request(features(N), N, [("m", "", NAMES)], rid=rid).SerializeToString()


def answered(seen: list[ObservedRequest], prefix: str) -> set[str]:
    return {o.request_id for o in seen if o.request_id.startswith(prefix) and o.version_served}


@contextlib.asynccontextmanager
async def replicas(
    tmp_path: Path, delays_ms: list[float], name: str, hedging: bool
) -> AsyncIterator[tuple[GrpcLeafClient, list[list[ObservedRequest]]]]:
    """Leaves serving the same model with the given delays (warmed directly), and a client
    over them in that order that has checked them all."""
    seen: list[list[ObservedRequest]] = [[] for _ in delays_ms]
    for i in range(len(delays_ms)):
        export_demo(tmp_path / str(i), "m", "1", seed=1)
    leaves = [Leaf(LeafConfig(tmp_path / str(i), max_queue_delay_ms=0, recheck_interval_s=3600), seen[i].append)
              for i in range(len(delays_ms))]
    delays = [DelayInterceptor(0.0) for _ in leaves]
    for leaf, delay in zip(leaves, delays):
        leaf.interceptors.append(delay)
    async with contextlib.AsyncExitStack() as stack:
        for leaf in leaves:
            await stack.enter_async_context(leaf)
            await leaf.stub.ScorePartition(leaf_pb2.PartitionRequest.FromString(payload("direct")), timeout=30)
        for delay, delay_ms in zip(delays, delays_ms):  # from now on: a model's first forwards are slow
            delay.delay_s = delay_ms / 1000.0
        client = GrpcLeafClient([f"127.0.0.1:{leaf.port}" for leaf in leaves], hedging=hedging, name=name,
                                timeout=TIMEOUT)
        try:
            assert await client.check_ready(5.0) == len(leaves)
            yield client, seen
        finally:
            await client.close()


def test_a_slow_replica_still_answers_when_the_other_is_frozen(tmp_path: Path) -> None:
    """Round-robin, so the first call goes to the slow replica and the second to the frozen
    one. Each runs out of the partition's timeout; a copy goes to the other replica and the
    slow one's answer wins. (Cancelling the first copy at the timeout and retrying on the
    frozen replica failed the first call with DEADLINE_EXCEEDED.)"""
    async def body() -> None:
        async with replicas(tmp_path, [SLOW_MS, FROZEN_MS], "timeout-copy", hedging=False) as (client, seen):
            before = sample(HEDGES, {"partition": "timeout-copy"})
            for i in range(2):
                reply = await client.score_partition(payload(f"call-{i}"), DEADLINE_S, [("m", "")])
                assert reply.models[0].error_code == 0, reply.models[0].error_message
            assert answered(seen[0], "call-") == {"call-0", "call-1"}
            assert answered(seen[1], "call-") == set()
            assert sample(HEDGES, {"partition": "timeout-copy"}) - before == 2  # one copy per call

    run(body)


def test_both_replicas_past_the_timeout_run_on_and_the_first_answer_wins(tmp_path: Path) -> None:
    """Hedging on (latency choice): whichever replica each call goes to first, a copy goes to
    the other at the partition's timeout and counts against the hedge budget, and the
    replica whose copy ran past the timeout is counted against."""
    async def body() -> None:
        async with replicas(tmp_path, [SLOW_MS, FROZEN_MS], "timeout-copy-hedged", hedging=True) as (client, seen):
            assert client.latency is not None
            for i in range(3):
                reply = await client.score_partition(payload(f"call-{i}"), DEADLINE_S, [("m", "")])
                assert reply.models[0].error_code == 0, reply.models[0].error_message
            assert answered(seen[0], "call-") == {"call-0", "call-1", "call-2"}
            assert answered(seen[1], "call-") == set()
            assert client.latency.hedges == 3
            # The frozen replica never answered and a losing copy counts nothing: it has a
            # mean only because a call's first copy ran past the timeout there (an untried
            # replica is chosen first, so by the second call at the latest).
            assert client.latency.mean_s(1) is not None

    run(body)


def test_without_another_replica_the_call_ends_at_the_partition_timeout(tmp_path: Path) -> None:
    async def body() -> None:
        async with replicas(tmp_path, [SLOW_MS], "timeout-alone", hedging=True) as (client, seen):
            with pytest.raises(LeafCallError) as failed:
                await client.score_partition(payload("call-0"), DEADLINE_S, [("m", "")])
            assert failed.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
            assert "partition timeout" in str(failed.value)
            assert sample(HEDGES, {"partition": "timeout-alone"}) == 0

    run(body)
