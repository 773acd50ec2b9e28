"""Replica choice no client can skew: failures that say nothing about a replica (the caller's
own short deadline, a bad request) leave the split of healthy traffic between two equal
replicas where it was. Real leaves on loopback, ``GrpcLeafClient`` as the root uses it."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import AsyncIterator

import grpc
import pytest

from harness.leaf_hooks import ObservedRequest
from leaf.config import LeafConfig
from protos.rootleaf.v1 import leaf_pb2
from root.errors import LeafCallError
from root.leaf_client import GrpcLeafClient
from tests.service.test_leaf_partition import NAMES, partition_request
from tests.service.test_leaf_server import Leaf, export_demo, features, run

N = 4
DELAY_MS = 20.0
"""Both replicas take this long per call (a leaf-side delay): a short deadline always fails."""
SHORT_S = 0.005
BURST = 60
"""Short-deadline calls from one client (the finding's reproduction used 60)."""
HEALTHY = 600
CONCURRENCY = 4
MIN_SHARE = 0.3
"""Least share of the healthy calls each of two equal replicas gets. Power of two choices on
observed latency splits equal replicas about evenly (noise decides the rest); before the
fix, a burst like this one left one replica 1.5% of the traffic."""


def payload(rid: str) -> bytes:
    return partition_request(features(N), N, [("m", "", NAMES)], rid=rid).SerializeToString()


@contextlib.asynccontextmanager
async def two_replicas(tmp_path: Path) -> AsyncIterator[tuple[GrpcLeafClient, list[list[ObservedRequest]]]]:
    """Two equal leaves serving the same model, and a hedging client that has checked both."""
    seen: list[list[ObservedRequest]] = [[], []]
    for i in range(2):
        export_demo(tmp_path / str(i), "m", "1", seed=1)
    leaves = [Leaf(LeafConfig(tmp_path / str(i), max_queue_delay_ms=0, recheck_interval_s=3600), seen[i].append,
                   delay_ms=DELAY_MS) for i in range(2)]
    async with leaves[0], leaves[1]:
        for leaf in leaves:  # a model's first forward passes are slow: not what is compared
            for i in range(5):
                await leaf.stub.ScorePartition(leaf_pb2.PartitionRequest.FromString(payload(f"direct-{i}")), timeout=30)
        client = GrpcLeafClient([f"127.0.0.1:{leaf.port}" for leaf in leaves], hedging=True, name="p")
        try:
            assert await client.check_ready(5.0) == 2
            yield client, seen
        finally:
            await client.close()


def test_short_deadline_calls_do_not_steer_healthy_traffic(tmp_path: Path) -> None:
    async def body() -> None:
        async with two_replicas(tmp_path) as (client, seen):
            for i in range(40):  # both replicas answer and are measured
                await client.score_partition(payload(f"warm-{i}"), 5.0, [("m", "")])
            for i in range(BURST):  # one client, deadlines no replica can meet
                with pytest.raises(LeafCallError) as failed:
                    await client.score_partition(payload(f"short-{i}"), SHORT_S, [("m", "")])
                assert failed.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
            for i in range(0, HEALTHY, CONCURRENCY):
                replies = await asyncio.gather(*(
                    client.score_partition(payload(f"ok-{j}"), 5.0, [("m", "")]) for j in range(i, i + CONCURRENCY)
                ))
                assert all(r.models[0].error_code == 0 for r in replies), replies
            # Each request counts once per replica it reached (a hedge copy may reach both).
            split = [len({o.request_id for o in s if o.request_id.startswith("ok-")}) for s in seen]
            assert min(split) >= MIN_SHARE * HEALTHY, split

    run(body)
