"""The Redis Cluster store while a slot migrates, on a real local cluster (3 masters): a slot
set MIGRATING on its owner and IMPORTING on its target with ``CLUSTER SETSLOT``, half of its
keys moved with ``MIGRATE``. Keys already moved are read from the target after ``ASK``, keys
still on the source from the source, a key in neither is missing; when the migration ends
(``SETSLOT NODE``), the store follows ``MOVED``. Every value is checked against the data."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from prometheus_client import REGISTRY
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError

from harness.datagen import generate_table, load_generated
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.feature_store import FetchResult
from root.redis_cluster_store import RedisClusterFeatureStore, retry_cause
from root.redis_records import entity_key_prefix, entity_keys
from tests.redis_server import LocalRedisCluster, RedisServer

ITEMS, SEED = 300, 5
CATALOG = FeatureCatalog.of(
    [FeatureSpec("u0", Entity.REQUEST, "float32", ()), FeatureSpec("c0", Entity.CANDIDATE, "float32", (3,)),
     FeatureSpec("c1", Entity.CANDIDATE, "int64", ())]
)
NAMES = ["c0", "c1"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    cluster = LocalRedisCluster(tmp_path / "cluster", masters=3, replicas=0)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _check(result: FetchResult, ids: np.ndarray) -> None:
    known = ids < ITEMS
    for name in NAMES:
        spec = CATALOG[name]
        table = generate_table(spec, ITEMS, SEED)
        np.testing.assert_array_equal(result.columns[name][known], table[ids[known].astype(np.intp)])
        assert (result.columns[name][~known] == spec.default).all()
    assert result.missing == int((~known).sum())


def test_a_slot_being_migrated_is_read_through_ask_then_moved(cluster: LocalRedisCluster) -> None:
    prefix = entity_key_prefix("rl", Entity.CANDIDATE)
    slots = np.array([key_slot(k) for k in entity_keys(prefix, np.arange(ITEMS, dtype=np.uint64))])
    # The slot of item 0, its keys among the items, and an id beyond them in the same slot.
    slot = int(slots[0])
    in_slot = np.flatnonzero(slots == slot)
    absent = next(i for i in range(ITEMS, ITEMS + 200_000) if key_slot(prefix + str(i).encode()) == slot)
    ids = np.concatenate([np.arange(ITEMS), [absent]]).astype(np.uint64)

    by_port = {n.port: n for n in cluster.nodes}
    source: RedisServer = by_port[cluster.slot_owner(slot)]
    target = next(m for m in cluster.masters() if m is not source)
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)

    def migrate(keys: np.ndarray) -> None:
        names = [k.decode() for k in entity_keys(prefix, keys.astype(np.uint64))]
        cluster.command(source, "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *names)

    async def body() -> None:
        await load_generated(cluster.url, CATALOG, users=4, items=ITEMS, seed=SEED, progress=False)
        store = RedisClusterFeatureStore(cluster.url, CATALOG, timeout_s=5.0)
        try:
            _check(await store.fetch(Entity.CANDIDATE, ids, NAMES), ids)  # the slot map, read once

            cluster.command(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
            cluster.command(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
            moved = in_slot[::2]
            migrate(moved)
            asked = _sample("rootleaf_root_redis_cluster_ask_reads_total")
            _check(await store.fetch(Entity.CANDIDATE, ids, NAMES), ids)
            # The moved keys and the absent one (neither on the source) were asked of the target.
            assert _sample("rootleaf_root_redis_cluster_ask_reads_total") - asked == len(moved) + 1

            migrate(in_slot[1::2])
            for node in (target, source, *(m for m in cluster.masters() if m not in (source, target))):
                cluster.command(node, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
            retries = _sample("rootleaf_root_redis_cluster_retries_total", cause="moved")
            _check(await store.fetch(Entity.CANDIDATE, ids, NAMES), ids)
            assert _sample("rootleaf_root_redis_cluster_retries_total", cause="moved") > retries
        finally:
            await store.close()

    asyncio.run(asyncio.wait_for(body(), timeout=60))


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        # Redis 7.2+ inside the read script: a slot no node serves, a slot being rehashed.
        (ResponseError("Script attempted to access a slot not served"), "unserved"),
        (ResponseError("Unable to execute command 'get' in script because undeclared keys were accessed "
                       "during rehashing of the slot"), "migrating"),
        (ResponseError("Script attempted to access a non local key in a cluster node script: 1f, on @user_script:3."),
         "moved"),
        (ResponseError("Script attempted to execute a command while the cluster is down"), "unserved"),
        # As redis-py raises them from a plain command: the code is stripped from the text.
        (TryAgainError("Multiple keys request during rehashing of slot"), "migrating"),
        (MovedError("3999 127.0.0.1:6381"), "moved"),
        (AskError("3999 127.0.0.1:6381"), "moved"),
        (ClusterDownError("Hash slot not served"), "unserved"),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), None),
    ],
)
def test_topology_errors_refresh_the_slot_map(error: ResponseError, cause: str | None) -> None:
    assert retry_cause(error) == cause
