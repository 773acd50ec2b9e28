"""RedisFeatureStore and the loader against a real redis-server on a loopback port."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from harness import features_cli
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from harness.datagen import generate_table
from root.feature_store import FeatureStoreError
from harness.datagen import load_generated
from root.redis_loader import LoadOptions
from root.redis_store import RedisFeatureStore
from tests.redis_server import RedisServer, ping, redis_server  # noqa: F401 - fixture

T = TypeVar("T")
USERS, ITEMS, SEED = 50, 300, 5


def every_dtype_catalog() -> FeatureCatalog:
    """Every catalog dtype, scalar and shaped, with every generator kind, on both entities."""
    kinds = {"float32": "embedding", "float16": "ratio", "float64": "scalar", "int64": "ids",
             "int32": "counter", "int8": "counter", "uint8": "ids", "bool": "scalar"}
    specs = []
    for dtype, kind in kinds.items():
        specs.append(FeatureSpec(f"c_{dtype}", Entity.CANDIDATE, dtype, (), default=1.0, kind="counter" if kind == "ids" else kind))
        specs.append(FeatureSpec(f"c_{dtype}_v", Entity.CANDIDATE, dtype, (5,), kind=kind, zero_fraction=0.3))
        specs.append(FeatureSpec(f"u_{dtype}_m", Entity.REQUEST, dtype, (2, 3), default=2.0, kind=kind))
    return FeatureCatalog.of(specs)


def run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(make())  # type: ignore[arg-type]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def load(url: str, catalog: FeatureCatalog, **kwargs: object) -> None:
    await load_generated(url, catalog, users=USERS, items=ITEMS, seed=SEED, progress=False, **kwargs)  # type: ignore[arg-type]


def expected(catalog: FeatureCatalog, name: str, ids: np.ndarray) -> np.ndarray:
    spec = catalog[name]
    count = USERS if spec.entity is Entity.REQUEST else ITEMS
    return generate_table(spec, count, SEED)[ids.astype(np.intp)]


def test_round_trip_every_dtype_and_shape(redis_server: RedisServer) -> None:  # noqa: F811
    catalog = every_dtype_catalog()
    rng = np.random.default_rng(1)

    async def scenario() -> None:
        await load(redis_server.url, catalog)
        store = RedisFeatureStore(redis_server.url, catalog)
        try:
            await store.check_layout()
            for entity, count in ((Entity.CANDIDATE, ITEMS), (Entity.REQUEST, USERS)):
                names = catalog.names(entity)
                # Shuffled, with duplicates: rows come back in request order.
                ids = rng.integers(0, count, 64).astype(np.uint64)
                result = await store.fetch(entity, ids, names)
                assert result.missing == 0
                assert list(result.columns) == names
                for name in names:
                    column = result.columns[name]
                    assert column.dtype == catalog[name].np_dtype
                    assert column.shape == (64, *catalog[name].shape)
                    assert column.flags.c_contiguous
                    np.testing.assert_array_equal(column, expected(catalog, name, ids))
            # Every stored row, a subset of features in another order.
            ids = np.arange(ITEMS, dtype=np.uint64)[::-1].copy()
            result = await store.fetch(Entity.CANDIDATE, ids, ["c_bool_v", "c_float16"])
            assert list(result.columns) == ["c_bool_v", "c_float16"]
            for name in result.columns:
                np.testing.assert_array_equal(result.columns[name], expected(catalog, name, ids))
        finally:
            await store.close()

    run(scenario)


def test_missing_ids_get_defaults_and_are_counted(redis_server: RedisServer) -> None:  # noqa: F811
    catalog = every_dtype_catalog()
    keys_before = metric("rootleaf_root_redis_keys_total", entity="candidate")
    missing_before = metric("rootleaf_root_redis_missing_total", entity="candidate")

    async def scenario() -> None:
        await load(redis_server.url, catalog)
        store = RedisFeatureStore(redis_server.url, catalog)
        try:
            # 3 unknown ids, one of them twice; 2 known ids, one twice: 5 distinct keys.
            ids = np.array([ITEMS + 1, 3, ITEMS + 1, 10**12, 7, 3, ITEMS], dtype=np.uint64)
            result = await store.fetch(Entity.CANDIDATE, ids, catalog.names(Entity.CANDIDATE))
            assert result.missing == 4  # rows filled with defaults
            known = np.array([1, 4, 5])
            unknown = np.array([0, 2, 3, 6])
            for name, column in result.columns.items():
                spec = catalog[name]
                np.testing.assert_array_equal(column[known], expected(catalog, name, ids[known]))
                np.testing.assert_array_equal(
                    column[unknown], np.full((4, *spec.shape), spec.default, spec.np_dtype)
                )
            # Without duplicates (keys in request order): 2 of 3 missing.
            ids = np.array([ITEMS + 5, 11, ITEMS + 6], dtype=np.uint64)
            result = await store.fetch(Entity.CANDIDATE, ids, ["c_int32_v", "c_float16"])
            assert result.missing == 2
            np.testing.assert_array_equal(result.columns["c_int32_v"][1], expected(catalog, "c_int32_v", ids[1:2])[0])
            np.testing.assert_array_equal(result.columns["c_float16"][[0, 2]], np.ones(2, np.float16))
        finally:
            await store.close()

    run(scenario)
    assert metric("rootleaf_root_redis_keys_total", entity="candidate") - keys_before == 5 + 3
    assert metric("rootleaf_root_redis_missing_total", entity="candidate") - missing_before == 3 + 2


def test_empty_and_unknown_requests(redis_server: RedisServer) -> None:  # noqa: F811
    catalog = every_dtype_catalog()

    async def scenario() -> None:
        await load(redis_server.url, catalog)
        store = RedisFeatureStore(redis_server.url, catalog)
        try:
            empty = await store.fetch(Entity.CANDIDATE, np.array([], np.uint64), ["c_int8_v"])
            assert empty.missing == 0 and empty.columns["c_int8_v"].shape == (0, 5)
            none = await store.fetch(Entity.CANDIDATE, np.array([1], np.uint64), [])
            assert dict(none.columns) == {}
            with pytest.raises(FeatureStoreError, match="u_bool_m"):
                await store.fetch(Entity.CANDIDATE, np.array([1], np.uint64), ["u_bool_m"])
        finally:
            await store.close()

    run(scenario)


def test_layout_mismatch_is_detected_and_a_reload_fixes_it(redis_server: RedisServer) -> None:  # noqa: F811
    old = every_dtype_catalog()
    # Same names, one dtype changed: a misread would go unnoticed without the layout check.
    specs = [s if s.name != "c_int32" else FeatureSpec("c_int32", Entity.CANDIDATE, "float32") for s in old.features.values()]
    new = FeatureCatalog.of(specs)
    errors_before = metric("rootleaf_root_redis_errors_total", kind="layout")
    ids = np.arange(10, dtype=np.uint64)

    async def scenario() -> None:
        store = RedisFeatureStore(redis_server.url, new)
        try:
            with pytest.raises(FeatureStoreError, match="no layout"):
                await store.check_layout()  # nothing loaded yet
            await load(redis_server.url, old)
            with pytest.raises(FeatureStoreError, match="reload the features"):
                await store.fetch(Entity.CANDIDATE, ids, ["c_float32"])
            # The request entity's layout did not change: still readable.
            await store.fetch(Entity.REQUEST, ids, ["u_int8_m"])
            # Reloading with the new catalog replaces the old records and the store reads again.
            results = await load_generated(
                redis_server.url, new, users=USERS, items=ITEMS, seed=SEED, progress=False
            )
            assert {r.entity: r.deleted for r in results} == {Entity.REQUEST: 0, Entity.CANDIDATE: ITEMS}
            result = await store.fetch(Entity.CANDIDATE, ids, ["c_int32", "c_float32"])
            for name, column in result.columns.items():
                np.testing.assert_array_equal(column, expected(new, name, ids))
        finally:
            await store.close()

    run(scenario)
    assert metric("rootleaf_root_redis_errors_total", kind="layout") - errors_before == 2


def test_corrupt_record_is_an_error(redis_server: RedisServer) -> None:  # noqa: F811
    catalog = every_dtype_catalog()
    before = metric("rootleaf_root_redis_errors_total", kind="corrupt")

    async def scenario() -> None:
        await load(redis_server.url, catalog)
        client = aioredis.Redis.from_url(redis_server.url)
        await client.set("rl:candidate:4", b"short")
        await client.aclose()
        store = RedisFeatureStore(redis_server.url, catalog)
        try:
            with pytest.raises(FeatureStoreError, match="corrupt"):
                await store.fetch(Entity.CANDIDATE, np.array([3, 4], np.uint64), ["c_float32"])
        finally:
            await store.close()

    run(scenario)
    assert metric("rootleaf_root_redis_errors_total", kind="corrupt") - before == 1


def test_redis_stopped_mid_run_then_recovers(redis_server: RedisServer) -> None:  # noqa: F811
    catalog = every_dtype_catalog()
    ids = np.arange(0, ITEMS, 7, dtype=np.uint64)
    want = expected(catalog, "c_float32_v", ids)
    before = metric("rootleaf_root_redis_errors_total", kind="connection")

    async def scenario() -> None:
        await load(redis_server.url, catalog)
        store = RedisFeatureStore(redis_server.url, catalog, pool_size=4, timeout_s=0.5)
        try:
            # Warm the pool with several connections, then take the server away under them.
            await asyncio.gather(*(store.fetch(Entity.CANDIDATE, ids, ["c_float32_v"]) for _ in range(8)))
            redis_server.stop()
            timeouts = metric("rootleaf_root_redis_errors_total", kind="timeout")
            for attempt in range(1, 4):
                # Refused at once: one connection error per fetch, none waits out its timeout.
                with pytest.raises(FeatureStoreError, match="unreachable"):
                    await store.fetch(Entity.CANDIDATE, ids, ["c_float32_v"])
                assert metric("rootleaf_root_redis_errors_total", kind="connection") - before == attempt
            assert metric("rootleaf_root_redis_errors_total", kind="timeout") == timeouts
            redis_server.start()  # same port, empty (no persistence): reload the data
            await load(redis_server.url, catalog)
            results = await asyncio.gather(*(store.fetch(Entity.CANDIDATE, ids, ["c_float32_v"]) for _ in range(8)))
            for result in results:
                np.testing.assert_array_equal(result.columns["c_float32_v"], want)
        finally:
            await store.close()

    run(scenario)
    assert metric("rootleaf_root_redis_errors_total", kind="connection") - before == 3


def test_frozen_redis_times_out_then_answers_correctly(redis_server: RedisServer) -> None:  # noqa: F811
    catalog = every_dtype_catalog()
    before = metric("rootleaf_root_redis_errors_total", kind="timeout")

    async def scenario() -> None:
        await load(redis_server.url, catalog)
        store = RedisFeatureStore(redis_server.url, catalog, pool_size=1, timeout_s=0.2)
        try:
            await store.fetch(Entity.CANDIDATE, np.array([1], np.uint64), ["c_int64_v"])
            redis_server.pause()
            try:
                # Given up by the store's own bound while the server is still frozen.
                with pytest.raises(FeatureStoreError, match="timed out after 0.2 s"):
                    await store.fetch(Entity.CANDIDATE, np.array([2], np.uint64), ["c_int64_v"])
                assert metric("rootleaf_root_redis_errors_total", kind="timeout") - before == 1
            finally:
                redis_server.resume()
            # The one pooled connection had an unanswered request on it: the next fetch must
            # get its own reply, never the late reply to the timed-out one.
            ids = np.array([9, 8], np.uint64)
            result = await store.fetch(Entity.CANDIDATE, ids, ["c_int64_v"])
            np.testing.assert_array_equal(result.columns["c_int64_v"], expected(catalog, "c_int64_v", ids))
        finally:
            await store.close()

    run(scenario)
    assert metric("rootleaf_root_redis_errors_total", kind="timeout") - before == 1


def test_concurrent_fetches_share_a_small_pool(redis_server: RedisServer) -> None:  # noqa: F811
    catalog = every_dtype_catalog()
    rng = np.random.default_rng(2)
    batches = [rng.integers(0, ITEMS, 32).astype(np.uint64) for _ in range(40)]

    async def scenario() -> None:
        await load(redis_server.url, catalog)
        store = RedisFeatureStore(redis_server.url, catalog, pool_size=2, timeout_s=2.0)
        try:
            results = await asyncio.gather(*(store.fetch(Entity.CANDIDATE, b, ["c_uint8_v", "c_float64"]) for b in batches))
            for ids, result in zip(batches, results):
                for name, column in result.columns.items():
                    np.testing.assert_array_equal(column, expected(catalog, name, ids))
        finally:
            await store.close()

    run(scenario)


def test_key_prefix_separates_namespaces(redis_server: RedisServer) -> None:  # noqa: F811
    catalog = every_dtype_catalog()

    async def scenario() -> None:
        await load(redis_server.url, catalog, options=LoadOptions(key_prefix="blue"))
        blue = RedisFeatureStore(redis_server.url, catalog, key_prefix="blue")
        green = RedisFeatureStore(redis_server.url, catalog, key_prefix="green")
        try:
            await blue.check_layout()
            with pytest.raises(FeatureStoreError, match="no layout"):
                await green.check_layout()
        finally:
            await blue.close()
            await green.close()

    run(scenario)


def test_features_cli_loads_a_catalog_and_a_workload(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    catalog = every_dtype_catalog()
    path = tmp_path / "catalog.json"
    catalog.save(path)
    argv = ["load", "--catalog", str(path), "--users", str(USERS), "--items", str(ITEMS),
            "--seed", str(SEED), "--redis", redis_server.url, "--key-prefix", "cli"]
    assert features_cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert f"candidate: {ITEMS} records" in out and f"load candidate                 {ITEMS} rows" in err  # progress on stderr

    assert features_cli.main(["load", "--catalog", str(path), "--redis", redis_server.url]) == 1
    assert "--users" in capsys.readouterr().err

    from harness.workload import builtin_workload, load_workload

    workload = load_workload(builtin_workload("ci"))
    assert features_cli.main(["load", "--workload", "ci", "--redis", redis_server.url, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    ci = workload.catalog()
    name = ci.names(Entity.CANDIDATE)[0]
    ids = np.array([0, workload.info.items - 1], np.uint64)

    async def read() -> None:
        store = RedisFeatureStore(redis_server.url, ci)
        try:
            result = await store.fetch(Entity.CANDIDATE, ids, [name])
        finally:
            await store.close()
        table = generate_table(ci[name], workload.info.items, workload.info.seed)
        np.testing.assert_array_equal(result.columns[name], table[ids.astype(np.intp)])

    run(read)


def test_flush_removes_records_a_smaller_reload_does_not_write(redis_server: RedisServer) -> None:  # noqa: F811
    catalog = every_dtype_catalog()
    tail = np.array([ITEMS - 2, ITEMS - 1], np.uint64)

    async def missing_after(items: int, options: LoadOptions) -> int:
        results = await load_generated(
            redis_server.url, catalog, users=USERS, items=items, seed=SEED, options=options, progress=False
        )
        assert {r.entity: r.records for r in results} == {Entity.REQUEST: USERS, Entity.CANDIDATE: items}
        store = RedisFeatureStore(redis_server.url, catalog)
        try:
            return (await store.fetch(Entity.CANDIDATE, tail, ["c_float32"])).missing
        finally:
            await store.close()

    async def scenario() -> None:
        # Small batches and pipelines: many round trips, same records.
        assert await missing_after(ITEMS, LoadOptions(batch_rows=7, batches_per_pipeline=2)) == 0
        assert await missing_after(ITEMS - 10, LoadOptions()) == 0  # same layout: old records stay
        assert await missing_after(ITEMS - 10, LoadOptions(flush=True)) == 2

    run(scenario)


@pytest.mark.parametrize("held", ["port", "bus_port"])
def test_a_server_whose_picked_port_was_taken_starts_on_fresh_ports(tmp_path: Path, held: str) -> None:
    server = RedisServer(tmp_path / "redis", extra_args=("--cluster-enabled", "yes"), cluster_bus=True)
    taken = getattr(server, held)
    with socket.socket() as holder:  # what an outgoing connection drawing the same port does
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        server.start()
        try:
            assert getattr(server, held) != taken
            assert ping(server.port)
        finally:
            server.stop()


def test_a_given_port_that_is_taken_is_an_error_with_the_log(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        server = RedisServer(tmp_path / "redis", port=holder.getsockname()[1])
        with pytest.raises(RuntimeError, match="Address already in use"):
            server.start()
        assert server.proc is None
