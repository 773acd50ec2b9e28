"""Feature-store and cache switches of ``rootleaf bench``, by the root overrides they produce."""

from __future__ import annotations

import pytest

from benchmarks.cluster import build_parser, store_overrides, store_variants, worker_variants


def test_local_store_changes_nothing_and_cache_size_is_passed_on() -> None:
    assert store_overrides("local", None) == {}
    assert store_overrides("local", 0) == {"cache.max_bytes": 0}


def test_redis_url_selects_the_redis_store() -> None:
    assert store_overrides("redis://127.0.0.1:6379/0", None) == {
        "feature_store.kind": "redis",
        "feature_store.url": "redis://127.0.0.1:6379/0",
    }


@pytest.mark.parametrize(("store", "cache", "fragment"), [("mysql://x", None, "feature-store"), ("local", -1, "cache")])
def test_bad_values_are_rejected(store: str, cache: int | None, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        store_overrides(store, cache)


def test_cli_parses_the_switches() -> None:
    args = build_parser().parse_args(["--feature-store", "redis://127.0.0.1:1/0", "--cache-max-bytes", "0"])
    assert (args.feature_store, args.cache_max_bytes) == (["redis://127.0.0.1:1/0"], 0)


def test_cluster_url_selects_the_cluster_store_and_stores_become_variants() -> None:
    url = "redis-cluster://127.0.0.1:7000,127.0.0.1:7001"
    assert store_overrides(url, None) == {"feature_store.kind": "redis-cluster", "feature_store.url": url}
    variants = store_variants(["local", "redis://127.0.0.1:1/0", url], 0)
    assert [v.name for v in variants] == ["local", "redis", "redis-cluster"]
    assert variants[0].overrides == {"feature_store.kind": "local", "cache.max_bytes": 0}
    assert variants[2].overrides["feature_store.url"] == url
    assert variants[1].overrides["feature_store.timeout_ms"] == 1000  # cost, not the timeout policy
    assert [v.name for v in store_variants(["local"], None)] == [""]  # one store: labels stay plain
    with pytest.raises(ValueError, match="one store per kind"):
        store_variants(["local", "local"], None)


def test_cli_repeats_feature_store() -> None:
    args = build_parser().parse_args(["--feature-store", "local", "--feature-store", "redis-cluster://h:1"])
    assert args.feature_store == ["local", "redis-cluster://h:1"]


def test_root_workers_multiply_the_variants() -> None:
    stores = store_variants(["local", "redis://127.0.0.1:1/0"], None)
    names = [v.name for v in worker_variants(stores, [1, 2])]
    assert names == ["local/workers=1", "local/workers=2", "redis/workers=1", "redis/workers=2"]
    single = worker_variants(store_variants(["local"], None), [2])
    assert [(v.name, v.overrides) for v in single] == [("", {"workers": 2})]
    assert build_parser().parse_args(["--root-workers", "1,2"]).root_workers == [1, 2]
    with pytest.raises(ValueError, match="root-workers"):
        worker_variants(stores, [0])
