"""The columnar feature cache: hits, one batched fetch for the misses, TTL, the byte bound."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from prometheus_client import REGISTRY

from root.cache import CachedFeatureStore
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from harness.datagen import generate_local_store
from root.feature_store import FetchResult
from root.local_store import LocalFeatureStore

C = Entity.CANDIDATE
NAMES = ["c_a", "c_b", "c_e"]


class CountingStore(LocalFeatureStore):
    """The real local store, recording each batched fetch it answers."""

    def __init__(self, directory: Path, catalog: FeatureCatalog) -> None:
        super().__init__(directory, catalog)
        self.calls: list[tuple[list[int], list[str]]] = []

    async def fetch(self, entity: Entity, ids: np.ndarray, names: Sequence[str]) -> FetchResult:
        self.calls.append((ids.tolist(), list(names)))
        return await super().fetch(entity, ids, names)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def store(tmp_path: Path) -> CountingStore:
    catalog = FeatureCatalog.of(
        [
            FeatureSpec("u_a", Entity.REQUEST, "float32", ()),
            FeatureSpec("c_a", C, "float32", (), kind="ratio", default=0.25),
            FeatureSpec("c_b", C, "int64", (4,), kind="ids"),
            FeatureSpec("c_e", C, "float16", (8,), kind="embedding"),
            # same dtype and shape as c_a / c_e: cached in their groups
            FeatureSpec("c_a2", C, "float32", (), kind="ratio"),
            FeatureSpec("c_e2", C, "float16", (8,), kind="embedding"),
        ]
    )
    generate_local_store(catalog, tmp_path, users=5, items=1000, seed=3)
    return CountingStore(tmp_path, catalog)


def _fetch(cache: CachedFeatureStore, ids: Sequence[int], names: Sequence[str] = NAMES) -> FetchResult:
    return asyncio.run(cache.fetch(C, np.asarray(ids, dtype=np.uint64), names))


def _check(store: CountingStore, result: FetchResult, ids: Sequence[int], names: Sequence[str] = NAMES) -> None:
    direct = store.fetch_sync(C, np.asarray(ids, dtype=np.uint64), names)
    for name in names:
        np.testing.assert_array_equal(result.columns[name], direct.columns[name])
        assert result.columns[name].dtype == direct.columns[name].dtype


def _cells(result: str) -> float:
    return REGISTRY.get_sample_value("rootleaf_root_cache_requests_total", {"entity": "candidate", "result": result}) or 0.0


def test_hits_after_first_fetch_and_metrics(store: CountingStore) -> None:
    cache = CachedFeatureStore(store, store.catalog, max_bytes=1 << 20, ttl_s=60)
    hits, misses = _cells("hit"), _cells("miss")
    ids = [4, 8, 15, 16, 23, 42, 4]
    _check(store, _fetch(cache, ids), ids)
    assert len(store.calls) == 1 and _cells("miss") - misses == len(ids) * 3
    _check(store, _fetch(cache, ids[::-1]), ids[::-1])
    assert len(store.calls) == 1 and _cells("hit") - hits == len(ids) * 3
    assert cache.cached_ids(C) == 6


def test_misses_are_one_rectangle_fetch(store: CountingStore) -> None:
    cache = CachedFeatureStore(store, store.catalog, max_bytes=1 << 20, ttl_s=60)
    _fetch(cache, [1, 2, 3], ["c_a", "c_b"])
    # New ids, known features: only the new ids are fetched.
    ids = [1, 2, 3, 7, 9]
    _check(store, _fetch(cache, ids, ["c_a", "c_b"]), ids, ["c_a", "c_b"])
    assert store.calls[-1] == ([7, 9], ["c_a", "c_b"])
    # Known ids, a new feature: only that feature is fetched.
    _check(store, _fetch(cache, ids, NAMES), ids)
    assert store.calls[-1] == (ids, ["c_e"])
    assert len(store.calls) == 3
    _fetch(cache, ids, NAMES)
    assert len(store.calls) == 3


def test_missing_ids_get_defaults_through_the_cache(store: CountingStore) -> None:
    cache = CachedFeatureStore(store, store.catalog, max_bytes=1 << 20, ttl_s=60)
    result = _fetch(cache, [5, 5000], ["c_a"])
    assert result.missing == 1 and result.columns["c_a"][1] == 0.25
    assert _fetch(cache, [5000], ["c_a"]).columns["c_a"].tolist() == [0.25]


def test_ttl_expires_cells(store: CountingStore) -> None:
    clock = Clock()
    cache = CachedFeatureStore(store, store.catalog, max_bytes=1 << 20, ttl_s=10, clock=clock)
    _fetch(cache, [1, 2], ["c_a"])
    clock.now += 6
    _fetch(cache, [2, 3], ["c_a", "c_e"])  # id 2's c_a is still fresh
    assert store.calls[-1] == ([2, 3], ["c_a", "c_e"])
    clock.now += 5  # id 1's c_a (11 s old) expired; id 2's c_a was refreshed 5 s ago
    _check(store, _fetch(cache, [1, 2], ["c_a"]), [1, 2], ["c_a"])
    assert store.calls[-1] == ([1], ["c_a"])
    calls = len(store.calls)
    _fetch(cache, [1, 2], ["c_a"])
    assert len(store.calls) == calls


def test_byte_bound_holds_and_values_stay_correct(store: CountingStore) -> None:
    limit = 64 * 1024
    cache = CachedFeatureStore(store, store.catalog, max_bytes=limit, ttl_s=60)
    rng = np.random.default_rng(0)
    for _ in range(30):
        ids = rng.integers(0, 1000, 200).tolist()
        _check(store, _fetch(cache, ids), ids)
        assert cache.nbytes <= limit
    assert 0 < cache.cached_ids(C) < 1000
    # Evicted ids are fetched again; recent ones stay cached.
    recent = ids
    calls = len(store.calls)
    _fetch(cache, recent)
    assert len(store.calls) == calls


def test_too_small_budget_bypasses_but_answers(store: CountingStore) -> None:
    cache = CachedFeatureStore(store, store.catalog, max_bytes=100, ttl_s=60)
    for _ in range(2):
        _check(store, _fetch(cache, [1, 2, 3]), [1, 2, 3])
    assert len(store.calls) == 2 and cache.nbytes <= 100


def test_zero_budget_is_a_pass_through(store: CountingStore) -> None:
    cache = CachedFeatureStore(store, store.catalog, max_bytes=0, ttl_s=60)
    _fetch(cache, [1])
    _fetch(cache, [1])
    assert len(store.calls) == 2 and cache.nbytes == 0


def test_features_joining_a_group_later_read_right_for_every_list(store: CountingStore) -> None:
    cache = CachedFeatureStore(store, store.catalog, max_bytes=1 << 20, ttl_s=60)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    lists = [["c_a", "c_e"], ["c_e2", "c_a2", "c_b"], ["c_a2", "c_a", "c_e", "c_e2", "c_b"], ["c_e"]]
    for names in lists + lists[::-1]:  # columns are added to groups between reads
        result = _fetch(cache, ids, names)
        _check(store, result, ids, names)
        assert set(result.columns) == set(names)
        for array in result.columns.values():
            assert array.flags.c_contiguous and array.shape[0] == len(ids)
    calls = len(store.calls)
    for names in lists:
        _check(store, _fetch(cache, ids[::-1], names), ids[::-1], names)
    assert len(store.calls) == calls  # every cell cached


def test_unknown_or_other_entity_feature_is_refused(store: CountingStore) -> None:
    cache = CachedFeatureStore(store, store.catalog, max_bytes=1 << 20, ttl_s=60)
    for names in (["c_a", "nope"], ["u_a"]):
        with pytest.raises(ValueError, match="not a candidate feature"):
            _fetch(cache, [1], names)
