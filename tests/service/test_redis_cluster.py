"""The Redis Cluster store against a real local cluster (3 masters, 3 replicas on loopback):
the same rows as single Redis, one read per master, scores identical to the local store, and
no wrong score while a master fails over or slots move under load."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from harness.demo_assets import DemoAssets
from harness import features_cli
from root.catalog import Entity, FeatureCatalog
from root.client import AsyncRootClient, ModelScores
from root.config import CacheConfig, FeatureStoreConfig
from harness.datagen import generate_table
from root.redis_cluster_store import ClusterUrl, RedisClusterFeatureStore
from harness.datagen import load_generated
from tests.redis_server import LocalRedisCluster, fresh_redis_cluster, redis_cluster  # noqa: F401 - fixtures
from tests.service.test_redis_root import (  # noqa: F401 - assets is a fixture
    assert_same_scores,
    assets,
    leaves,
    load_redis,
    models_of,
    root,
    root_config,
)
from tests.waiting import eventually_async

T = TypeVar("T")
NO_CACHE = CacheConfig(max_bytes=0)
Request = tuple[int, np.ndarray]


def run(body: Callable[[], Awaitable[T]], timeout_s: float = 90) -> T:
    return asyncio.run(asyncio.wait_for(body(), timeout=timeout_s))  # type: ignore[arg-type]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def cluster_store(url: str, timeout_ms: int = 1000) -> FeatureStoreConfig:
    # A budget that holds a few slot-map refreshes and retries on a loaded machine.
    return FeatureStoreConfig(kind="redis-cluster", url=url, timeout_ms=timeout_ms, pool_size=4)


def requests_of(assets: DemoAssets, count: int, seed: int) -> list[Request]:
    info = assets.workload.info
    rng = np.random.default_rng(seed)
    return [
        (int(rng.integers(0, info.users)), rng.integers(0, info.items, info.candidates_per_request).astype(np.uint64))
        for _ in range(count)
    ]


def test_url_forms() -> None:
    url = ClusterUrl.parse("redis-cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2:7001/")
    assert url.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (url.username, url.password) == ("u", "p@ss")
    assert url.node_url("10.0.0.3", 7002) == "redis://u:p%40ss@10.0.0.3:7002/0"
    assert ClusterUrl.parse("redis+cluster://h:1").nodes == (("h", 1),)
    for bad in ("redis://h:1", "redis-cluster://h", "redis-cluster://h:1,h2:x", "redis-cluster://:1"):
        with pytest.raises(ValueError):
            ClusterUrl.parse(bad)


def test_rows_match_the_generated_data_with_one_read_per_master(
    assets: DemoAssets, redis_cluster: LocalRedisCluster  # noqa: F811
) -> None:
    info = assets.workload.info
    catalog = FeatureCatalog.load(assets.catalog)
    names = catalog.names(Entity.CANDIDATE)
    ids = np.concatenate([np.arange(0, 300, 3), [info.items + 5, 7, 7]]).astype(np.uint64)  # unknown id, repeats

    async def body() -> None:
        await load_redis(redis_cluster.url, assets)
        store = RedisClusterFeatureStore(redis_cluster.url, catalog, timeout_s=2.0)
        try:
            await store.check_layout()
            await store.fetch(Entity.CANDIDATE, ids, names)  # loads the script on every master
            masters = redis_cluster.masters()
            assert len(masters) == 3
            for master in masters:
                redis_cluster.command(master, "CONFIG", "RESETSTAT")
            result = await store.fetch(Entity.CANDIDATE, ids, names)
            for master in masters:
                stats = redis_cluster.command(master, "INFO", "commandstats")
                calls = [line for line in stats.splitlines() if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:"))]
                assert len(calls) == 1 and calls[0].startswith("cmdstat_evalsha:calls=1,"), (master.port, stats)
            assert result.missing == 1
            known = ids < info.items
            for name in names:
                spec = catalog[name]
                column = result.columns[name]
                assert column.shape == (len(ids), *spec.shape) and column.dtype == spec.np_dtype
                table = generate_table(spec, info.items, info.seed)
                np.testing.assert_array_equal(column[known], table[ids[known].astype(np.intp)])
                np.testing.assert_array_equal(column[~known][0], np.full(spec.shape, spec.default, spec.np_dtype))
        finally:
            await store.close()

    run(body)


def test_features_load_cli_writes_the_cluster(
    assets: DemoAssets, redis_cluster: LocalRedisCluster, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    hosts = redis_cluster.url.split("://", 1)[1]
    assert features_cli.main(["load", "--workload", "ci", "--redis-cluster", hosts, "--quiet"]) == 0
    info = assets.workload.info
    out = capsys.readouterr().out
    assert f"candidate: {info.items} records" in out and f"request: {info.users} records" in out
    # Every master holds a share of the records.
    sizes = [int(redis_cluster.command(m, "DBSIZE")) for m in redis_cluster.masters()]
    assert len(sizes) == 3 and all(size > 0 for size in sizes)
    assert sum(sizes) >= info.items + info.users


def test_root_scores_identical_on_local_store_and_cluster(
    assets: DemoAssets, redis_cluster: LocalRedisCluster  # noqa: F811
) -> None:
    models = models_of(assets)
    local_store = FeatureStoreConfig(kind="local", path=assets.store)

    async def body() -> None:
        await load_redis(redis_cluster.url, assets)
        async with leaves(assets) as targets:
            local_cfg = root_config(assets, targets, local_store, CacheConfig())
            cluster_cfg = root_config(assets, targets, cluster_store(redis_cluster.url), NO_CACHE)
            async with root(local_cfg) as local, root(cluster_cfg) as cluster:
                for i, (user, candidates) in enumerate(requests_of(assets, 6, seed=4)):
                    assert_same_scores(
                        await local.score(user, candidates, models, request_id=f"l{i}"),
                        await cluster.score(user, candidates, models, request_id=f"c{i}"),
                        models,
                    )

    run(body)


async def _references(assets: DemoAssets, targets: dict[str, str], pool: list[Request]) -> list[dict[str, ModelScores]]:
    local_cfg = root_config(assets, targets, FeatureStoreConfig(kind="local", path=assets.store), CacheConfig())
    async with root(local_cfg) as local:
        return [await local.score(user, candidates, models_of(assets)) for user, candidates in pool]


class Load:
    """Closed-loop callers cycling a request pool; every answer is checked against the local
    store's, every failure must be UNAVAILABLE. Bounded in calls."""

    MAX_CALLS = 5000

    def __init__(self, client: AsyncRootClient, pool: list[Request], references: list[dict[str, ModelScores]],
                 models: list[str]) -> None:
        self.client, self.pool, self.references, self.models = client, pool, references, models
        self.ok = 0
        self.unavailable = 0
        self.stop = asyncio.Event()
        self.calls = 0

    async def caller(self, offset: int) -> None:
        i = offset
        while not self.stop.is_set() and self.calls < self.MAX_CALLS:
            self.calls += 1
            user, candidates = self.pool[i % len(self.pool)]
            try:
                got = await self.client.score(user, candidates, self.models, timeout_s=10.0)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
                self.unavailable += 1
            else:
                assert_same_scores(self.references[i % len(self.pool)], got, self.models)  # never wrong data
                self.ok += 1
            i += 1

    async def run_during(self, event: Callable[[], None], callers: int = 2, after_ok: int = 20) -> None:
        """Load before, during and after ``event`` (run in a thread) until ``after_ok`` more
        answers came back correct after it."""
        tasks = [asyncio.create_task(self.caller(k * 3), name=f"load-{k}") for k in range(callers)]

        def reached(ok: int) -> bool:
            for t in tasks:
                if t.done():
                    t.result()  # an assertion inside a caller
                    raise AssertionError(f"{t.get_name()} stopped")
            assert self.calls < self.MAX_CALLS, f"only {self.ok} correct answers in {self.calls} calls"
            return self.ok >= ok

        try:
            await eventually_async(lambda: reached(10), "some traffic before the event", 60)
            await asyncio.to_thread(event)
            target = self.ok + after_ok
            await eventually_async(lambda: reached(target), f"{after_ok} correct answers after the event", 60)
        finally:
            self.stop.set()
            await asyncio.gather(*tasks)


def test_master_killed_under_load_fails_over_without_wrong_scores(
    assets: DemoAssets, fresh_redis_cluster: LocalRedisCluster  # noqa: F811
) -> None:
    models = models_of(assets)
    redis_cluster = fresh_redis_cluster
    pool = requests_of(assets, 12, seed=5)

    async def body() -> None:
        await load_redis(redis_cluster.url, assets)
        await asyncio.to_thread(redis_cluster.wait_replicated)  # the replica holds every record
        async with leaves(assets, max_batch_candidates=0) as targets:  # no merging: exact scores under load
            references = await _references(assets, targets, pool)
            async with root(root_config(assets, targets, cluster_store(redis_cluster.url), NO_CACHE)) as client:
                retries0 = sample("rootleaf_root_redis_cluster_retries_total", cause="connection")
                victim = redis_cluster.masters()[0]
                load = Load(client, pool, references, models)
                await load.run_during(lambda: redis_cluster.kill_master(victim))
                assert victim.port not in {m.port for m in redis_cluster.masters()}
                assert len(redis_cluster.masters()) == 3  # the replica took over
                assert sample("rootleaf_root_redis_cluster_retries_total", cause="connection") > retries0
                # Recovered without a restart: a full pass over the pool is correct.
                for (user, candidates), reference in zip(pool, references):
                    assert_same_scores(reference, await client.score(user, candidates, models), models)

    run(body)


def test_slots_moved_under_load_without_wrong_scores(
    assets: DemoAssets, fresh_redis_cluster: LocalRedisCluster  # noqa: F811
) -> None:
    models = models_of(assets)
    redis_cluster = fresh_redis_cluster
    pool = requests_of(assets, 12, seed=6)

    async def body() -> None:
        await load_redis(redis_cluster.url, assets)
        async with leaves(assets, max_batch_candidates=0) as targets:  # no merging: exact scores under load
            references = await _references(assets, targets, pool)
            async with root(root_config(assets, targets, cluster_store(redis_cluster.url), NO_CACHE)) as client:
                moved0 = sample("rootleaf_root_redis_cluster_retries_total", cause="moved")
                source, target = redis_cluster.masters()[:2]
                before = {s: redis_cluster.slot_owner(s) for s in range(0, 16384, 512)}
                load = Load(client, pool, references, models)
                await load.run_during(lambda: redis_cluster.reshard(source, target, 1000))
                after = {s: redis_cluster.slot_owner(s) for s in before}
                moved = [s for s in before if before[s] != after[s]]
                assert moved and all(before[s] == source.port and after[s] == target.port for s in moved)
                # The store's map was stale for the moved slots: reads were refused, the map
                # re-read and the reads retried, never answered from the wrong node.
                assert sample("rootleaf_root_redis_cluster_retries_total", cause="moved") > moved0
                for (user, candidates), reference in zip(pool, references):
                    assert_same_scores(reference, await client.score(user, candidates, models), models)

    run(body)


def test_hung_master_is_failed_over_and_the_store_follows(
    assets: DemoAssets, fresh_redis_cluster: LocalRedisCluster  # noqa: F811
) -> None:
    """A master that hangs (SIGSTOP) rather than refuses: fetches time out until the cluster
    promotes its replica, then a background slot-map refresh sends them there."""
    models = models_of(assets)
    redis_cluster = fresh_redis_cluster
    pool = requests_of(assets, 12, seed=7)

    async def body() -> None:
        await load_redis(redis_cluster.url, assets)
        await asyncio.to_thread(redis_cluster.wait_replicated)
        async with leaves(assets, max_batch_candidates=0) as targets:
            references = await _references(assets, targets, pool)
            config = root_config(assets, targets, cluster_store(redis_cluster.url, timeout_ms=300), NO_CACHE)
            async with root(config) as client:
                timeouts0 = sample("rootleaf_root_redis_cluster_retries_total", cause="timeout")
                victim = redis_cluster.masters()[1]
                load = Load(client, pool, references, models)
                await load.run_during(lambda: redis_cluster.freeze_master(victim))
                assert victim.port not in {m.port for m in redis_cluster.masters()}
                assert sample("rootleaf_root_redis_cluster_retries_total", cause="timeout") > timeouts0
                for (user, candidates), reference in zip(pool, references):
                    assert_same_scores(reference, await client.score(user, candidates, models), models)

    run(body)
