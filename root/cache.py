"""Columnar in-memory feature cache in front of any ``FeatureStore``.

Per entity, a *slab*: a sorted id index (``searchsorted`` lookups, vectorised over the
request's ids) mapping ids to slots, one value array ``[capacity, *shape]`` per feature,
and one fill-time matrix ``[capacity, features of the entity]`` (TTL per (id, feature)
cell). A request is answered by one vectorised hit/miss partition of that matrix; the
misses become one rectangle (ids with any miss x features with any miss) fetched from the
store in ONE batched call, then written back.

Memory is bounded by ``max_bytes`` counting everything allocated: slab capacity grows by
doubling while it fits, then the least recently used slots are evicted; a feature whose
column would not fit is not cached (always fetched). State is owned by the root's event
loop: the hit gather happens before the store ``await`` and the write-back after it, each
without yielding, so concurrent requests never see a half-updated slab.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from root import metrics
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.feature_store import FeatureStore, FetchResult

_MIN_SLOTS = 256
# Per-slot bookkeeping besides the fill-time matrix: id (8), last use (8), live flag (1),
# index entry (8 + 8).
_SLOT_OVERHEAD = 33
# Fill times are float32 seconds since the cache was created (ms precision for days).
_NEVER = np.float32(-np.inf)


class _Slab:
    """One entity's cached rows."""

    def __init__(self, entity: Entity, specs: Sequence[FeatureSpec]) -> None:
        self.entity = entity
        self.capacity = 0
        self.column_of = {spec.name: i for i, spec in enumerate(specs)}
        self.keys = np.empty(0, dtype=np.uint64)  # sorted ids
        self.key_slots = np.empty(0, dtype=np.int64)  # slot of keys[i]
        self.slot_used = np.empty(0, dtype=np.float64)
        self.slot_live = np.empty(0, dtype=bool)
        self.filled = np.empty((0, len(specs)), dtype=np.float32)
        self.data: dict[str, np.ndarray] = {}
        self.data_row_bytes = 0

    @property
    def slot_bytes(self) -> int:
        return _SLOT_OVERHEAD + 4 * self.filled.shape[1] + self.data_row_bytes

    @property
    def nbytes(self) -> int:
        return self.capacity * self.slot_bytes

    @property
    def live(self) -> int:
        return len(self.keys)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where absent."""
        if not len(self.keys):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.searchsorted(self.keys, ids)
        np.minimum(pos, len(self.keys) - 1, out=pos)
        found = self.keys[pos] == ids
        return np.where(found, self.key_slots[pos], -1)

    def add_column(self, spec: FeatureSpec) -> None:
        self.data[spec.name] = np.zeros((self.capacity, *spec.shape), dtype=spec.np_dtype)
        self.data_row_bytes += spec.row_bytes

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra <= 0:
            return
        self.slot_used = np.concatenate([self.slot_used, np.full(extra, -np.inf)])
        self.slot_live = np.concatenate([self.slot_live, np.zeros(extra, dtype=bool)])
        self.filled = np.concatenate([self.filled, np.full((extra, self.filled.shape[1]), _NEVER)])
        for name, data in self.data.items():
            self.data[name] = np.concatenate([data, np.zeros((extra, *data.shape[1:]), dtype=data.dtype)])
        self.capacity = capacity

    def evict_lru(self, count: int) -> None:
        live = np.flatnonzero(self.slot_live)
        count = min(count, len(live))
        if count <= 0:
            return
        if count < len(live):
            victims = live[np.argpartition(self.slot_used[live], count - 1)[:count]]
        else:
            victims = live
        self.slot_live[victims] = False
        keep = self.slot_live[self.key_slots]
        self.keys = self.keys[keep]
        self.key_slots = self.key_slots[keep]

    def insert(self, new_ids: np.ndarray, now: float) -> None:
        """Give free slots to ``new_ids`` (unique, absent), as many as there are free slots."""
        free = np.flatnonzero(~self.slot_live)[: len(new_ids)]
        new_ids = new_ids[: len(free)]
        self.slot_used[free] = now
        self.slot_live[free] = True
        self.filled[free] = _NEVER
        order = np.argsort(new_ids, kind="stable")
        pos = np.searchsorted(self.keys, new_ids[order])
        self.keys = np.insert(self.keys, pos, new_ids[order])
        self.key_slots = np.insert(self.key_slots, pos, free[order])


class CachedFeatureStore:
    """A ``FeatureStore`` answering from memory, falling back to ``store`` for misses."""

    def __init__(
        self,
        store: FeatureStore,
        catalog: FeatureCatalog,
        *,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 0 or ttl_s <= 0:
            raise ValueError(f"cache needs max_bytes >= 0 and ttl_s > 0, got {max_bytes}, {ttl_s}")
        self.store = store
        self.catalog = catalog
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._epoch = clock()
        self._slabs = {
            entity: _Slab(entity, [s for s in catalog.features.values() if s.entity is entity]) for entity in Entity
        }

    @property
    def nbytes(self) -> int:
        """Bytes the cache has allocated (always <= ``max_bytes``)."""
        return sum(slab.nbytes for slab in self._slabs.values())

    def cached_ids(self, entity: Entity) -> int:
        """Ids with a slot in ``entity``'s slab."""
        return self._slabs[entity].live

    async def fetch(self, entity: Entity, ids: np.ndarray, names: Sequence[str]) -> FetchResult:
        ids = np.asarray(ids, dtype=np.uint64)
        slab = self._slabs[entity]
        now = self._clock() - self._epoch
        n = len(ids)
        try:
            cols = np.fromiter((slab.column_of[name] for name in names), dtype=np.intp, count=len(names))
        except KeyError as exc:
            raise ValueError(f"feature {exc.args[0]!r} is not a {entity.value} feature of the catalog") from None
        slots = slab.lookup(ids)
        have = slots >= 0
        safe = np.where(have, slots, 0)
        out: dict[str, np.ndarray] = {}
        if slab.capacity:
            slab.slot_used[slots[have]] = now  # least recently used slots are evicted first
            fresh = slab.filled[np.ix_(safe, cols)] > np.float32(now - self.ttl_s)
            fresh &= have[:, None]
            for name in names:
                data = slab.data.get(name)
                if data is not None:
                    out[name] = data.take(safe, axis=0)
        else:
            fresh = np.zeros((n, len(names)), dtype=bool)
        hits = int(np.count_nonzero(fresh))
        metrics.child(metrics.CACHE_REQUESTS, entity.value, "hit").inc(hits)
        metrics.child(metrics.CACHE_REQUESTS, entity.value, "miss").inc(n * len(names) - hits)
        if hits == n * len(names):
            return FetchResult(out, 0)
        miss_rows = np.flatnonzero(~fresh.all(axis=1))
        miss_names = [names[i] for i in np.flatnonzero(~fresh.all(axis=0)).tolist()]
        start = time.perf_counter()
        fetched = await self.store.fetch(entity, ids[miss_rows], miss_names)
        metrics.FEATURE_STORE_SECONDS.observe(time.perf_counter() - start)
        for name in miss_names:
            spec = self.catalog.features[name]
            values = np.asarray(fetched.columns[name], dtype=spec.np_dtype)
            if name not in out:
                out[name] = np.empty((n, *spec.shape), dtype=spec.np_dtype)
            out[name][miss_rows] = values
        self._write_back(slab, ids[miss_rows], miss_names, fetched, now)
        return FetchResult(out, fetched.missing)

    def _write_back(self, slab: _Slab, ids: np.ndarray, names: list[str], fetched: FetchResult, now: float) -> None:
        """Store fetched rows; the slab may have changed while the store was awaited."""
        if self.max_bytes == 0:
            return
        for name in names:
            if name not in slab.data:
                spec = self.catalog.features[name]
                if self.nbytes + slab.capacity * spec.row_bytes <= self.max_bytes:
                    slab.add_column(spec)
        slots = slab.lookup(ids)
        new = np.unique(ids[slots < 0])
        if len(new):
            self._make_room(slab, len(new))
            slab.insert(new, now)
            slots = slab.lookup(ids)
        cached = slots >= 0
        if not cached.any():
            return
        target = slots[cached]
        stored = []
        for name in names:
            data = slab.data.get(name)
            if data is not None:
                data[target] = np.asarray(fetched.columns[name])[cached]
                stored.append(slab.column_of[name])
        if stored:
            slab.filled[np.ix_(target, np.array(stored, dtype=np.intp))] = now

    def _make_room(self, slab: _Slab, need: int) -> None:
        free = slab.capacity - slab.live
        if free >= need:
            return
        affordable = slab.capacity + max(0, self.max_bytes - self.nbytes) // slab.slot_bytes
        wanted = max(2 * slab.capacity, slab.live + need, _MIN_SLOTS)
        target = min(wanted, affordable)
        if target > slab.capacity:
            slab.grow(int(target))
            free = slab.capacity - slab.live
        if free < need:
            slab.evict_lru(need - free)

    async def check(self) -> None:
        await self.store.check()

    async def close(self) -> None:
        await self.store.close()
