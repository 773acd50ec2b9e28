"""Hedged partition calls while replicas disagree on versions (a rollout): the replica that
has the new version is slow, the other lacks it. A hedge must not go where the version is
known to be missing, and a refusal must not win over the copy that can still answer.
Real leaves on loopback, ``GrpcLeafClient`` as the root uses it."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import AsyncIterator

from harness.leaf_hooks import DelayInterceptor, ObservedRequest
from leaf.config import LeafConfig
from root.config import PartitionTimeoutConfig
from root.hedging import EXPLORE_EVERY
from root.leaf_client import GrpcLeafClient
from tests.service.test_leaf_partition import NAMES, partition_request
from tests.service.test_leaf_server import Leaf, export_demo, features, run
from tests.service.test_leaf_versions import scan, versions_of

N = 4
SLOW_S = 0.3
WARM_UP_CALLS = 40


class Replica:
    """A leaf, what it was asked, and its injected delay (changeable while it runs)."""

    def __init__(self, repo: Path, delay_ms: float) -> None:
        self.seen: list[ObservedRequest] = []
        self.leaf = Leaf(LeafConfig(repo, max_queue_delay_ms=0, recheck_interval_s=3600), self.seen.append)
        self.delay = DelayInterceptor(delay_ms / 1000.0)
        self.leaf.interceptors.append(self.delay)

    def asked(self, version: str) -> list[str]:
        """``version_served`` of each request naming ``version`` ("" = refused)."""
        return [o.version_served for o in self.seen if o.version_requested == version]


def payload(version: str, rid: str) -> bytes:
    return partition_request(features(N), N, [("m", version, NAMES)], rid=rid).SerializeToString()


@contextlib.asynccontextmanager
async def rollout(tmp_path: Path, b_versions: tuple[str, ...]) -> AsyncIterator[tuple[GrpcLeafClient, Replica, Replica]]:
    """Replica A has v2 and answers at once, replica B (``b_versions``) takes 30 ms; a hedging
    client has seen both (ListModels) and warmed its latency figures on unversioned calls,
    ending so that the next pick is not an exploring one."""
    export_demo(tmp_path / "a", "m", "2", seed=2)
    for version in b_versions:
        export_demo(tmp_path / "b", "m", version, seed=int(version))
    a, b = Replica(tmp_path / "a", 0.0), Replica(tmp_path / "b", 30.0)
    async with a.leaf, b.leaf:
        # A fixed partition timeout far above SLOW_S: what is tested is where hedges go.
        client = GrpcLeafClient([f"127.0.0.1:{a.leaf.port}", f"127.0.0.1:{b.leaf.port}"], hedging=True, name="p",
                                timeout=PartitionTimeoutConfig(floor_ms=5000, cap_ms=5000))
        try:
            assert await client.check_ready(5.0) == 2
            assert client.latency is not None
            calls = 0
            while calls < WARM_UP_CALLS or (calls + client.latency.hedges + 1) % EXPLORE_EVERY == 0:
                assert calls < 2 * WARM_UP_CALLS
                reply = await client.score_partition(payload("", f"warm-{calls}"), 5.0, [("m", "")])
                assert reply.models[0].error_code == 0, reply.models[0].error_message
                calls += 1
            yield client, a, b
        finally:
            await client.close()


def test_a_hedge_never_goes_to_a_replica_known_to_lack_the_version(tmp_path: Path) -> None:
    async def body() -> None:
        async with rollout(tmp_path, b_versions=("1",)) as (client, a, b):
            assert client.latency is not None
            hedges = client.latency.hedges
            a.delay.delay_s = SLOW_S  # the replica with v2 turns slow: its calls outlast the hedge delay
            for i in range(3):
                reply = await client.score_partition(payload("2", f"v2-{i}"), 5.0, [("m", "2")])
                assert (reply.models[0].error_code, reply.models[0].version) == (0, "2"), reply.models[0].error_message
            assert client.latency.hedges == hedges  # B lacks v2: nowhere to hedge to
            assert b.asked("2") == [] and a.asked("2") == ["2"] * 3

    run(body)


def test_a_refusal_does_not_win_over_the_copy_that_can_answer(tmp_path: Path) -> None:
    async def body() -> None:
        async with rollout(tmp_path, b_versions=("1", "2")) as (client, a, b):
            assert client.latency is not None
            # B unloads v2 (a rollback reaching it first); the client has not heard yet.
            shutil.rmtree(tmp_path / "b" / "m" / "2")
            await scan(b.leaf.server)
            assert await versions_of(b.leaf, "m") == ["1"]
            hedges = client.latency.hedges
            a.delay.delay_s = SLOW_S
            reply = await client.score_partition(payload("2", "v2"), 5.0, [("m", "2")])
            assert (reply.models[0].error_code, reply.models[0].version) == (0, "2"), reply.models[0].error_message
            assert client.latency.hedges == hedges + 1  # the hedge went to B ...
            assert b.asked("2") == [""] and a.asked("2") == ["2"]  # ... and was refused, A's answer won
            assert client.served_versions("m") == frozenset({"2"})  # and B is struck off for v2

    run(body)
