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
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from root.client import AsyncRootClient, ModelScores
from root.cache import CachedFeatureStore
from root.config import PartitionConfig
from root.leaf_client import GrpcLeafClient
from root.hedging import HEDGE_BUDGET
from root.partition_health import PartitionHealth, PartitionProber
from protos.rootleaf.v1 import root_pb2
from root.server import create_server as create_root_server
from tests.service.test_root_service import FAST, Cluster, LoopThread, Observed, build_cluster, close_cluster, score, start_leaf


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


def _health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(reply.status)


def test_root_stays_ready_with_a_partition_down_and_reports_it(cluster: Cluster) -> None:
    """Readiness is the root's own: a dead partition shows in Status and metrics, and only its
    models fail; the root keeps reporting SERVING so it stays in its Service."""
    root, port = cluster.loop.run(cluster.start_root(cluster.base_config()))
    target = f"127.0.0.1:{port}"
    leaf_b, _ = cluster.leaves["pb"]
    cluster.loop.run(leaf_b.stop(0))
    assert cluster.loop.run(root.check_partitions()) is False
    for service in ("", "rootleaf.v1.Root"):
        assert _health(target, service) == health_pb2.HealthCheckResponse.SERVING
    status = cluster.loop.run(_status(target))
    by_name = {p.name: p for p in status.partitions}
    assert (by_name["pb"].serving_addresses, by_name["pb"].addresses) == (0, 1)
    assert (by_name["pa"].serving_addresses, by_name["pa"].addresses) == (1, 1)
    assert REGISTRY.get_sample_value("rootleaf_root_partition_serving_addresses", {"partition": "pb"}) == 0
    assert REGISTRY.get_sample_value("rootleaf_root_partition_serving_addresses", {"partition": "pa"}) == 1
    results = score(cluster, target, 1, np.arange(5, dtype=np.uint64), FAST)
    assert results["m_a"].ok and results["m_c"].error_code is grpc.StatusCode.UNAVAILABLE


async def _status(target: str) -> root_pb2.RootStatusResponse:
    async with AsyncRootClient(target) as client:
        return await client.status()


def test_partition_health_checks_every_resolved_address(cluster: Cluster) -> None:
    """A ``dns:///`` target stands for every address its name resolves to (pods behind a
    headless Service): each is checked on its own, not one Check through the balancer."""
    _, pa_port = cluster.leaves["pa"]
    names = {"leaves.pa.test": ["127.0.0.1", "127.0.0.2"], "gone.test": []}

    async def resolve(host: str, port: int) -> list[str]:
        if host not in names:
            raise OSError(f"unknown host {host}")
        return names[host]

    async def round_() -> dict[str, PartitionHealth]:
        prober = PartitionProber(
            {"pa": [f"dns:///leaves.pa.test:{pa_port}"], "pz": ["dns:///nowhere.test:1", "dns:///gone.test:2"]},
            resolve=resolve,
        )
        try:
            return await prober.check(2.0)
        finally:
            await prober.close()

    health = cluster.loop.run(round_())
    pa = {t.address: t for t in health["pa"].targets}
    assert set(pa) == {f"127.0.0.1:{pa_port}", f"127.0.0.2:{pa_port}"}
    assert pa[f"127.0.0.1:{pa_port}"].serving and not pa[f"127.0.0.2:{pa_port}"].serving
    assert pa[f"127.0.0.2:{pa_port}"].detail == "UNAVAILABLE"
    assert health["pa"].serving == 1
    assert health["pz"].serving == 0 and len(health["pz"].targets) == 2
    assert {t.detail.split(":")[0] for t in health["pz"].targets} == {"cannot resolve nowhere.test", "resolved to no address"}


@pytest.mark.parametrize("detail", [False, True])
def test_status_detail_and_reflection_are_opt_in(cluster: Cluster, detail: bool) -> None:
    config = replace(cluster.base_config(), status_detail=detail, reflection=detail)
    root, port = cluster.loop.run(cluster.start_root(config))
    target = f"127.0.0.1:{port}"
    cluster.loop.run(root.check_partitions())
    status = cluster.loop.run(_status(target))
    paths = [b.path for b in status.bundles]
    targets = [t for p in status.partitions for t in p.targets]
    per_address = [h for p in status.partitions for h in p.health]
    assert all(b.content_hash for b in status.bundles)  # rollout verification needs only this
    assert all(p.addresses == 1 for p in status.partitions)
    if detail:
        assert all(paths) and len(targets) == 3 and len(per_address) == 3
    else:
        assert paths == [""] and targets == [] and per_address == []
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        if detail:
            reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
            assert "rootleaf.v1.Root" in {s.name for s in reply.list_services_response.service}
        else:
            with pytest.raises(grpc.RpcError) as refused:
                next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
            assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("hedging", [True, False])
def test_a_slow_replica_is_routed_around_and_hedged(cluster: Cluster, hedging: bool) -> None:
    """Two replicas of partition pa, one 400 ms slower: with hedging the root sends it only
    its exploring share (and hedges what it does send), every call succeeds with the right
    scores; without, round-robin gives it half of the calls."""
    slow_seen = Observed()
    slow, slow_port = cluster.loop.run(start_leaf(cluster.repos["pa"], slow_seen, delay_ms=400.0))
    cluster.leaves["pa-slow"] = (slow, slow_port)
    config = cluster.base_config()
    pa = config.partitions["pa"]
    partitions = dict(config.partitions) | {"pa": PartitionConfig("pa", (*pa.targets, f"127.0.0.1:{slow_port}"), pa.models)}
    root, port = cluster.loop.run(cluster.start_root(replace(config, partitions=partitions, hedging=hedging)))
    hedges = REGISTRY.get_sample_value("rootleaf_root_leaf_hedges_total", {"partition": "pa"}) or 0.0
    cands = np.arange(8, dtype=np.uint64)
    expected = cluster.expected_scores("m_a", 4, cands)
    calls = 64
    for i in range(calls):
        results = score(cluster, f"127.0.0.1:{port}", 4, cands, ["m_a"], request_id=f"hedge-{hedging}-{i}", timeout_s=5.0)
        assert results["m_a"].ok, results["m_a"]
        np.testing.assert_allclose(results["m_a"].outputs["score"], expected, rtol=1e-6, atol=1e-7)
    to_slow = len({r.request_id for r in slow_seen.requests})
    sent_hedges = (REGISTRY.get_sample_value("rootleaf_root_leaf_hedges_total", {"partition": "pa"}) or 0.0) - hedges
    if hedging:
        assert to_slow <= calls // 4, to_slow  # routed away: exploration and first tries only
        assert sent_hedges <= HEDGE_BUDGET * calls + 1  # within the hedge budget
    else:
        assert to_slow == calls // 2  # strict round-robin over the two targets
        assert sent_hedges == 0
