"""Columnar in-memory feature cache in front of any ``FeatureStore``.

Per entity, a *slab*: a sorted id index (``searchsorted`` lookups, vectorised over the
request's ids) mapping ids to slots, and per feature one array ``[capacity, *shape]`` plus
the time each slot's value was filled (TTL per (id, feature) cell). A request is answered
by one vectorised hit/miss partition; the misses become one rectangle (ids with any miss x
features with any miss) fetched from the store in ONE batched call, then written back.

Memory is bounded by ``max_bytes`` counting everything allocated: slab capacity grows by
doubling while it fits, then the least recently used slots are evicted; a feature whose column
would not fit is not cached (always fetched). State is owned by the root's event loop: the
hit gather happens before the store ``await`` and the write-back after it, each without
yielding, so concurrent requests never see a half-updated slab.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from root import metrics
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.feature_store import FeatureStore, FetchResult

_MIN_SLOTS = 256
# Per-slot bookkeeping: id (8), last use (8), live flag (1), index entry (8 + 8).
_SLOT_OVERHEAD = 33
_NEVER = -np.inf


@dataclass(slots=True)
class _Column:
    data: np.ndarray
    """[capacity, *shape] values."""
    filled_at: np.ndarray
    """[capacity] float64 clock time the value was written (-inf = empty)."""


class _Slab:
    """One entity's cached rows."""

    def __init__(self, entity: Entity) -> None:
        self.entity = entity
        self.capacity = 0
        self.keys = np.empty(0, dtype=np.uint64)  # sorted ids
        self.key_slots = np.empty(0, dtype=np.int64)  # slot of keys[i]
        self.slot_id = np.empty(0, dtype=np.uint64)
        self.slot_used = np.empty(0, dtype=np.float64)
        self.slot_live = np.empty(0, dtype=bool)
        self.columns: dict[str, _Column] = {}
        self.row_bytes = 0  # sum of allocated columns' bytes per slot (incl. filled_at)

    @property
    def nbytes(self) -> int:
        return self.capacity * (self.row_bytes + _SLOT_OVERHEAD)

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
        self.columns[spec.name] = _Column(
            np.zeros((self.capacity, *spec.shape), dtype=spec.np_dtype),
            np.full(self.capacity, _NEVER),
        )
        self.row_bytes += spec.row_bytes + 8

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra <= 0:
            return
        self.slot_id = np.concatenate([self.slot_id, np.zeros(extra, dtype=np.uint64)])
        self.slot_used = np.concatenate([self.slot_used, np.full(extra, _NEVER)])
        self.slot_live = np.concatenate([self.slot_live, np.zeros(extra, dtype=bool)])
        for col in self.columns.values():
            col.data = np.concatenate([col.data, np.zeros((extra, *col.data.shape[1:]), dtype=col.data.dtype)])
            col.filled_at = np.concatenate([col.filled_at, np.full(extra, _NEVER)])
        self.capacity = capacity

    def evict_oldest(self, count: int) -> None:
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

    def insert(self, new_ids: np.ndarray, now: float) -> np.ndarray:
        """Give slots to ``new_ids`` (unique, absent); returns their slots."""
        free = np.flatnonzero(~self.slot_live)[: len(new_ids)]
        self.slot_id[free] = new_ids
        self.slot_used[free] = now
        self.slot_live[free] = True
        for col in self.columns.values():
            col.filled_at[free] = _NEVER
        order = np.argsort(new_ids, kind="stable")
        pos = np.searchsorted(self.keys, new_ids[order])
        self.keys = np.insert(self.keys, pos, new_ids[order])
        self.key_slots = np.insert(self.key_slots, pos, free[order])
        return free


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
        self._slabs = {entity: _Slab(entity) for entity in Entity}

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
        now = self._clock()
        fresh_after = now - self.ttl_s
        slots = slab.lookup(ids)
        have = slots >= 0
        safe = np.where(have, slots, 0)
        slab.slot_used[slots[have]] = now  # least recently used slots are evicted first
        out: dict[str, np.ndarray] = {}
        fresh: dict[str, np.ndarray] = {}
        miss_rows = np.zeros(len(ids), dtype=bool)
        hits = 0
        for name in names:
            col = slab.columns.get(name)
            if col is None or not len(col.filled_at):
                ok = np.zeros(len(ids), dtype=bool)
            else:
                ok = have & (col.filled_at[safe] > fresh_after)
                out[name] = col.data[safe]
            fresh[name] = ok
            n_ok = int(np.count_nonzero(ok))
            hits += n_ok
            if n_ok < len(ids):
                miss_rows |= ~ok
        cells = len(ids) * len(names)
        metrics.CACHE_REQUESTS.labels(entity.value, "hit").inc(hits)
        metrics.CACHE_REQUESTS.labels(entity.value, "miss").inc(cells - hits)
        miss_names = [n for n in names if not fresh[n].all()]
        if not miss_names:
            return FetchResult(out, 0)
        rows = np.flatnonzero(miss_rows)
        start = time.perf_counter()
        fetched = await self.store.fetch(entity, ids[rows], miss_names)
        metrics.FEATURE_STORE_SECONDS.observe(time.perf_counter() - start)
        for name in miss_names:
            spec = self.catalog.features[name]
            values = np.asarray(fetched.columns[name], dtype=spec.np_dtype)
            if name in out:
                out[name][rows] = values
            else:
                full = np.empty((len(ids), *spec.shape), dtype=spec.np_dtype)
                full[rows] = values
                out[name] = full
        self._write_back(slab, ids[rows], {n: out[n][rows] for n in miss_names}, now)
        return FetchResult(out, fetched.missing)

    def _write_back(self, slab: _Slab, ids: np.ndarray, columns: dict[str, np.ndarray], now: float) -> None:
        """Store fetched rows; the slab may have changed while the store was awaited."""
        if self.max_bytes == 0:
            return
        for name in columns:
            if name not in slab.columns:
                spec = self.catalog.features[name]
                if self.nbytes + slab.capacity * (spec.row_bytes + 8) <= self.max_bytes:
                    slab.add_column(spec)
        slots = slab.lookup(ids)
        new = np.unique(ids[slots < 0])
        if len(new):
            self._make_room(slab, len(new))
            free_count = slab.capacity - slab.live
            slab.insert(new[:free_count], now)
            slots = slab.lookup(ids)
        cached = slots >= 0
        if not cached.any():
            return
        target = slots[cached]
        for name, values in columns.items():
            col = slab.columns.get(name)
            if col is not None:
                col.data[target] = values[cached]
                col.filled_at[target] = now

    def _make_room(self, slab: _Slab, need: int) -> None:
        free = slab.capacity - slab.live
        if free >= need:
            return
        per_slot = slab.row_bytes + _SLOT_OVERHEAD
        affordable = slab.capacity + (self.max_bytes - self.nbytes) // per_slot
        wanted = max(2 * slab.capacity, slab.live + need, _MIN_SLOTS)
        target = min(wanted, affordable)
        if target > slab.capacity:
            slab.grow(int(target))
            free = slab.capacity - slab.live
        if free < need:
            slab.evict_oldest(need - free)

    async def close(self) -> None:
        await self.store.close()
