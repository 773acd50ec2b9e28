"""A root on the Redis store, with in-process leaves on loopback: same scores as the local
store, the cache saving Redis reads, and Redis outages surfacing as UNAVAILABLE."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Awaitable, Callable, Sequence, TypeVar

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from harness.demo_assets import DemoAssets, ensure_assets
from harness.workload import builtin_workload
from leaf.config import LeafConfig
from leaf.server import create_server as create_leaf
from root.catalog import FeatureCatalog
from root.client import AsyncRootClient, ModelScores
from root.config import CacheConfig, FeatureStoreConfig, PartitionConfig, RootConfig
from harness.datagen import load_generated
from root.server import create_server as create_root
from tests.redis_server import RedisServer, redis_server  # noqa: F401 - fixture
from tests.waiting import eventually_async

T = TypeVar("T")
NO_CACHE = CacheConfig(max_bytes=0)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> DemoAssets:
    """The CI workload's catalog, local store, models and bundles (a few seconds, once)."""
    return ensure_assets(builtin_workload("ci"), tmp_path_factory.mktemp("ci"))


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(body(), timeout=60))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def models_of(assets: DemoAssets) -> list[str]:
    return [m for models in assets.partitions.values() for m in models]


async def load_redis(url: str, assets: DemoAssets) -> None:
    info = assets.workload.info
    catalog = FeatureCatalog.load(assets.catalog)
    await load_generated(url, catalog, users=info.users, items=info.items, seed=info.seed, progress=False)


@contextlib.asynccontextmanager
async def leaves(assets: DemoAssets, max_batch_candidates: int = 4096) -> AsyncIterator[dict[str, str]]:
    """One in-process leaf per partition; yields partition -> target. ``max_batch_candidates=0``
    runs every request alone, so concurrent requests score bit-identically to serial ones."""
    started = []
    try:
        targets = {}
        for partition, models in assets.partitions.items():
            config = LeafConfig(
                assets.models_dir, models=models, device="cpu", max_queue_delay_ms=0.0,
                max_batch_candidates=max_batch_candidates,
            )
            server, port = create_leaf(config)
            await server.start()
            started.append(server)
            targets[partition] = f"127.0.0.1:{port}"
        yield targets
    finally:
        await asyncio.gather(*(s.stop(1.0) for s in started))


def root_config(
    assets: DemoAssets, targets: dict[str, str], store: FeatureStoreConfig, cache: CacheConfig
) -> RootConfig:
    return RootConfig(
        catalog=assets.catalog,
        partitions={
            p: PartitionConfig(p, (targets[p],), models) for p, models in assets.partitions.items()
        },
        feature_store=store,
        bundles=dict(assets.bundles),
        cache=cache,
    )


@contextlib.asynccontextmanager
async def root(config: RootConfig) -> AsyncIterator[AsyncRootClient]:
    server, port = create_root(config)
    await server.start()
    try:
        assert await server.check_partitions()
        async with AsyncRootClient(f"127.0.0.1:{port}") as client:
            yield client
    finally:
        await server.stop(1.0)


def redis_store_config(url: str, timeout_ms: int = 500) -> FeatureStoreConfig:
    return FeatureStoreConfig(kind="redis", url=url, timeout_ms=timeout_ms, pool_size=4)


def assert_same_scores(a: dict[str, ModelScores], b: dict[str, ModelScores], models: Sequence[str]) -> None:
    assert sorted(a) == sorted(b) == sorted(models)
    for model in models:
        assert a[model].ok and b[model].ok, (a[model].error_message, b[model].error_message)
        assert list(a[model].outputs) == list(b[model].outputs)
        for output, values in a[model].outputs.items():
            np.testing.assert_array_equal(values, b[model].outputs[output])


def test_scores_identical_with_local_and_redis_store(assets: DemoAssets, redis_server: RedisServer) -> None:  # noqa: F811
    info = assets.workload.info
    models = models_of(assets)
    rng = np.random.default_rng(3)
    local_store = FeatureStoreConfig(kind="local", path=assets.store)

    async def body() -> None:
        await load_redis(redis_server.url, assets)
        async with leaves(assets) as targets:
            local_cfg = root_config(assets, targets, local_store, CacheConfig())
            redis_cfg = root_config(assets, targets, redis_store_config(redis_server.url), NO_CACHE)
            async with root(local_cfg) as local, root(redis_cfg) as redis:
                for i in range(5):
                    # Some ids beyond the stored ones (defaults on both stores) and a repeat.
                    user = int(rng.integers(0, info.users + 20))
                    candidates = rng.integers(0, info.items + 50, info.candidates_per_request)
                    candidates[-1] = candidates[0]
                    got_local = await local.score(user, candidates, models, request_id=f"l{i}")
                    got_redis = await redis.score(user, candidates, models, request_id=f"r{i}")
                    assert_same_scores(got_local, got_redis, models)

    run(body)


def test_cache_cuts_redis_reads_and_answers_cached_ids_during_an_outage(
    assets: DemoAssets, redis_server: RedisServer  # noqa: F811
) -> None:
    info = assets.workload.info
    models = models_of(assets)
    n = info.candidates_per_request
    first = np.arange(0, n, dtype=np.uint64)
    overlap = np.arange(n // 2, n + n // 2, dtype=np.uint64)  # half cached, half new

    def redis_reads() -> tuple[float, float]:
        return (
            sample("rootleaf_root_redis_keys_total", entity="candidate"),
            sample("rootleaf_root_redis_fetch_seconds_count"),
        )

    async def body() -> None:
        await load_redis(redis_server.url, assets)
        async with leaves(assets) as targets:
            config = root_config(assets, targets, redis_store_config(redis_server.url), CacheConfig())
            async with root(config) as client:
                keys0, calls0 = redis_reads()
                cold = await client.score(7, first, models)
                keys1, calls1 = redis_reads()
                assert keys1 - keys0 == n and calls1 - calls0 == 2  # user + candidates

                hits0 = sample("rootleaf_root_cache_requests_total", entity="candidate", result="hit")
                warm = await client.score(7, first, models)
                keys2, calls2 = redis_reads()
                assert (keys2, calls2) == (keys1, calls1)  # no Redis call at all
                assert sample("rootleaf_root_cache_requests_total", entity="candidate", result="hit") > hits0
                assert_same_scores(cold, warm, models)

                await client.score(7, overlap, models)
                keys3, calls3 = redis_reads()
                assert keys3 - keys2 == n - n // 2 and calls3 - calls2 == 1  # only the new ids

                # Redis gone: fully cached requests are still served, others fail UNAVAILABLE.
                redis_server.stop()
                assert_same_scores(cold, await client.score(7, first, models), models)
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await client.score(8, first + n * 2, models)
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "feature store" in (failed.value.details() or "")

    run(body)


def test_redis_outage_fails_unavailable_then_recovers(assets: DemoAssets, redis_server: RedisServer) -> None:  # noqa: F811
    info = assets.workload.info
    models = models_of(assets)
    candidates = np.arange(3, 3 + info.candidates_per_request, dtype=np.uint64)

    async def body() -> None:
        await load_redis(redis_server.url, assets)
        async with leaves(assets) as targets:
            config = root_config(assets, targets, redis_store_config(redis_server.url, timeout_ms=200), NO_CACHE)
            async with root(config) as client:
                before = await client.score(11, candidates, models)
                unavailable0 = sample("rootleaf_root_requests_total", code="UNAVAILABLE")
                errors0 = sample("rootleaf_root_redis_errors_total", kind="connection")
                redis_server.stop()
                for _ in range(3):
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        await client.score(11, candidates, models)
                    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
                # The servicer counts a call after its status went out: wait for the count.
                await eventually_async(lambda: sample("rootleaf_root_requests_total", code="UNAVAILABLE") >= unavailable0 + 3,
                                       "3 UNAVAILABLE calls counted")
                assert sample("rootleaf_root_requests_total", code="UNAVAILABLE") == unavailable0 + 3
                assert sample("rootleaf_root_redis_errors_total", kind="connection") > errors0

                # Frozen rather than gone: the store's timeout bounds the wait.
                redis_server.start()
                await load_redis(redis_server.url, assets)
                redis_server.pause()
                try:
                    with pytest.raises(grpc.aio.AioRpcError) as frozen:
                        await client.score(11, candidates, models, timeout_s=5.0)
                    assert frozen.value.code() == grpc.StatusCode.UNAVAILABLE
                finally:
                    redis_server.resume()

                after = await client.score(11, candidates, models)
                assert_same_scores(before, after, models)

    run(body)


def test_start_up_check_reports_an_unloaded_store_and_the_root_still_serves(
    assets: DemoAssets, redis_server: RedisServer  # noqa: F811
) -> None:
    info = assets.workload.info
    models = models_of(assets)
    candidates = np.arange(3, 3 + info.candidates_per_request, dtype=np.uint64)

    async def body() -> None:
        async with leaves(assets) as targets:
            # A Redis with no data loaded: the layout check fails at start-up.
            redis_server.stop()
            redis_server.start()
            config = root_config(assets, targets, redis_store_config(redis_server.url), NO_CACHE)
            async with root(config) as client:
                assert sample("rootleaf_root_feature_store_ready") == 0
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await client.score(11, candidates, models)
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
                # Loading the data later recovers without a restart.
                await load_redis(redis_server.url, assets)
                recovered = await client.score(11, candidates, models)
                assert all(r.ok for r in recovered.values())
            async with root(config):
                assert sample("rootleaf_root_feature_store_ready") == 1

    run(body)
