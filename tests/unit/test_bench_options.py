"""Feature-store and cache switches of ``rootleaf bench``, by the root overrides they produce."""

from __future__ import annotations

import pytest

from benchmarks.cluster import build_parser, store_overrides


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
    assert (args.feature_store, args.cache_max_bytes) == ("redis://127.0.0.1:1/0", 0)
