"""Root behaviour when leaves die: errors for the dead partition's models only, failover
across a partition's targets, health reporting, and a graceful drain."""

from __future__ import annotations

import asyncio
import gc
import socket
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from root.client import AsyncRootClient, ModelScores
from root.cache import CachedFeatureStore
from root.config import PartitionConfig
from root.leaf_client import GrpcLeafClient
from root.server import create_server as create_root_server
from tests.service.test_root_service import FAST, Cluster, LoopThread, build_cluster, close_cluster, score, start_leaf


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    loop = LoopThread()
    c = build_cluster(tmp_path, loop, slow_delay_ms=300.0)
    try:
        yield c
    finally:
        close_cluster(c)
        loop.close()


def test_killed_leaf_gives_errors_for_its_models_only(cluster: Cluster) -> None:
    root, port = cluster.loop.run(cluster.start_root(cluster.base_config()))
    target = f"127.0.0.1:{port}"
    cands = np.arange(30, dtype=np.uint64)
    assert all(r.ok for r in score(cluster, target, 1, cands, FAST).values())
    leaf_b, _ = cluster.leaves["pb"]
    cluster.loop.run(leaf_b.stop(0))
    before = cluster.observed.requests[:]
    results = score(cluster, target, 1, cands, FAST)
    for model in ("m_c", "m_full"):
        assert results[model].error_code is grpc.StatusCode.UNAVAILABLE, results[model]
        assert "pb" in results[model].error_message
    for model in ("m_a", "m_b"):
        assert results[model].ok
        np.testing.assert_allclose(results[model].outputs["score"], cluster.expected_scores(model, 1, cands), rtol=1e-6, atol=1e-7)
    assert len(cluster.observed.requests) == len(before) + 2
    # Health follows the partitions: one has no serving target left.
    assert cluster.loop.run(root.check_partitions()) is False


def test_partition_fails_over_to_a_live_target(cluster: Cluster) -> None:
    spare, spare_port = cluster.loop.run(start_leaf(cluster.repos["pa"], cluster.observed))
    cluster.loop.run(spare.stop(0))  # a target that is down for the whole test
    config = cluster.base_config()
    pa = config.partitions["pa"]
    partitions = dict(config.partitions) | {"pa": PartitionConfig("pa", (f"127.0.0.1:{spare_port}", *pa.targets), pa.models)}
    root, port = cluster.loop.run(cluster.start_root(replace(config, partitions=partitions)))
    cands = np.arange(12, dtype=np.uint64)
    for _ in range(4):  # round-robin would hit the dead target at least twice
        results = score(cluster, f"127.0.0.1:{port}", 2, cands, ["m_a", "m_b"])
        assert results["m_a"].ok and results["m_b"].ok
    assert cluster.loop.run(root.check_partitions()) is True


def test_stop_drains_in_flight_calls(cluster: Cluster) -> None:
    root, port = cluster.loop.run(cluster.start_root(cluster.base_config()))

    def leaf_saw(request_id: str) -> bool:
        with cluster.observed.cond:
            return cluster.observed.cond.wait_for(lambda: bool(cluster.observed.for_request(request_id)), 10.0)

    async def call_then_stop() -> dict[str, ModelScores]:
        async with AsyncRootClient(f"127.0.0.1:{port}") as client:
            call = asyncio.create_task(client.score(1, np.arange(50, dtype=np.uint64), ["m_slow"], request_id="r-drain"))
            # The slow leaf holds the call ~300 ms after it saw it: stop the root meanwhile.
            assert await asyncio.to_thread(leaf_saw, "r-drain")
            await root.stop(5.0)
            return await call

    results = cluster.loop.run(call_then_stop())
    assert results["m_slow"].ok and results["m_slow"].outputs["score"].shape == (50,)


def test_leaf_draining_mid_call_gives_unavailable_for_its_models_only(cluster: Cluster) -> None:
    root, port = cluster.loop.run(cluster.start_root(cluster.base_config()))
    leaf_slow, _ = cluster.leaves["ps"]

    def leaf_saw(request_id: str) -> bool:
        with cluster.observed.cond:
            return cluster.observed.cond.wait_for(lambda: bool(cluster.observed.for_request(request_id)), 10.0)

    async def call_then_stop_leaf() -> dict[str, ModelScores]:
        async with AsyncRootClient(f"127.0.0.1:{port}") as client:
            call = asyncio.create_task(
                client.score(1, np.arange(20, dtype=np.uint64), ["m_a", "m_slow"], request_id="r-leaf-stop")
            )
            # The slow leaf holds the call ~300 ms; a drain shorter than that cancels the call.
            assert await asyncio.to_thread(leaf_saw, "r-leaf-stop")
            await leaf_slow.stop(0.05)
            return await call

    results = cluster.loop.run(call_then_stop_leaf())
    assert results["m_a"].ok
    assert results["m_slow"].error_code is grpc.StatusCode.UNAVAILABLE, results["m_slow"]


@pytest.mark.parametrize("taken", ["listen", "metrics_port"])
def test_failed_build_leaves_no_leaf_channel_or_store_open(cluster: Cluster, taken: str) -> None:
    """A root whose port cannot be bound fails before it opens what only a coroutine can close."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no SO_REUSEPORT: gRPC cannot share it
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        overrides = {"listen": f"127.0.0.1:{port}"} if taken == "listen" else {"metrics_port": port}
        config = cluster.base_config(**overrides)

        async def build() -> None:
            create_root_server(config)

        before = _live(GrpcLeafClient) | _live(CachedFeatureStore)
        with pytest.raises((OSError, RuntimeError)) as failure:
            cluster.loop.run(build())
        gc.collect()
        # The failure's traceback (kept here) still references the builder's frame.
        assert failure.value.__traceback__ is not None
        assert (_live(GrpcLeafClient) | _live(CachedFeatureStore)) - before == set()
    # The same config builds and serves once the port is free (nothing half-built lingers).
    root, root_port = cluster.loop.run(cluster.start_root(cluster.base_config()))
    assert cluster.loop.run(root.check_partitions()) is True


def _live(kind: type) -> set[int]:
    return {id(o) for o in gc.get_objects() if type(o) is kind}
