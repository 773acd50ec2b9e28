"""Columnar in-memory feature cache in front of any ``FeatureStore``.

Per entity, a *slab*: a sorted id index (``searchsorted`` lookups, vectorised over the
request's ids) mapping ids to slots, the values, and one fill-time matrix ``[capacity,
features of the entity]`` (TTL per (id, feature) cell). Values are kept per *group* of
features with one dtype and shape, slot-major (``block[slot, member, *shape]``): a request
gathers each group's rows with one ``take`` and turns them feature-major with one copy, so
its cost follows the number of groups (a handful), not of features (hundreds); each
feature's column is then a contiguous view of that copy. What a request's feature list
needs (fill-time columns, members per group) is kept per list until a column is added. A
request is answered by one vectorised hit/miss partition of the fill-time matrix; the
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
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from root import metrics
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.feature_store import FeatureStore, FetchResult
from transport import tracing

_MIN_SLOTS = 256
# Per-slot bookkeeping besides the fill-time matrix: id (8), last use (8), live flag (1),
# index entry (8 + 8).
_SLOT_OVERHEAD = 33
# Fill times are float32 seconds since the cache was created (ms precision for days).
_NEVER = np.float32(-np.inf)
# Read plans kept per slab (one per distinct feature list requested); cleared when full.
_MAX_PLANS = 256


class _Group:
    """The cached columns of one (dtype, shape) of an entity, slot-major."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...], capacity: int) -> None:
        self.dtype = dtype
        self.shape = shape
        self.member: dict[str, int] = {}
        """Feature name -> its index on the block's second axis."""
        self.block = np.zeros((capacity, 0, *shape), dtype=dtype)
        """``[capacity, members, *shape]``."""

    def add(self, names: Sequence[str]) -> None:
        capacity = self.block.shape[0]
        extra = np.zeros((capacity, len(names), *self.shape), dtype=self.dtype)
        self.block = np.concatenate([self.block, extra], axis=1)
        for name in names:
            self.member[name] = len(self.member)

    def grow(self, extra: int) -> None:
        more = np.zeros((extra, *self.block.shape[1:]), dtype=self.dtype)
        self.block = np.concatenate([self.block, more])


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    """What reading one feature list takes, kept until the slab's columns change."""

    cols: np.ndarray
    """Fill-time column of each name (intp)."""
    gathers: tuple[tuple[_Group, np.ndarray, tuple[str, ...]], ...]
    """Per group holding some of the names: the group, their members (intp), their names."""


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
        self.groups: dict[tuple[str, tuple[int, ...]], _Group] = {}
        self.group_of: dict[str, _Group] = {}
        """Cached feature -> its group."""
        self.data_row_bytes = 0
        self._plans: dict[tuple[str, ...], _ReadPlan] = {}

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

    def plan(self, names: Sequence[str]) -> _ReadPlan:
        """The read plan of ``names``; ``KeyError`` for a name not of this entity."""
        key = names if isinstance(names, tuple) else tuple(names)
        plan = self._plans.get(key)
        if plan is None:
            cols = np.fromiter((self.column_of[name] for name in key), dtype=np.intp, count=len(key))
            found: dict[_Group, list[str]] = {}
            for name in key:
                group = self.group_of.get(name)
                if group is not None:
                    found.setdefault(group, []).append(name)
            gathers = tuple(
                (group, np.array([group.member[n] for n in members], dtype=np.intp), tuple(members))
                for group, members in found.items()
            )
            plan = _ReadPlan(cols, gathers)
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def add_columns(self, specs: Sequence[FeatureSpec]) -> None:
        by_group: dict[tuple[str, tuple[int, ...]], list[FeatureSpec]] = {}
        for spec in specs:
            by_group.setdefault((spec.np_dtype.str, spec.shape), []).append(spec)
        for key, members in by_group.items():
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = _Group(members[0].np_dtype, members[0].shape, self.capacity)
            group.add([spec.name for spec in members])
            for spec in members:
                self.group_of[spec.name] = group
                self.data_row_bytes += spec.row_bytes
        self._plans.clear()

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra <= 0:
            return
        self.slot_used = np.concatenate([self.slot_used, np.full(extra, -np.inf)])
        self.slot_live = np.concatenate([self.slot_live, np.zeros(extra, dtype=bool)])
        self.filled = np.concatenate([self.filled, np.full((extra, self.filled.shape[1]), _NEVER)])
        for group in self.groups.values():
            group.grow(extra)
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
            plan = slab.plan(names)
        except KeyError as exc:
            raise ValueError(f"feature {exc.args[0]!r} is not a {entity.value} feature of the catalog") from None
        slots = slab.lookup(ids)
        have = slots >= 0
        safe = np.where(have, slots, 0)
        out: dict[str, np.ndarray] = {}
        if slab.capacity:
            slab.slot_used[slots[have]] = now  # least recently used slots are evicted first
            fresh = slab.filled[np.ix_(safe, plan.cols)] > np.float32(now - self.ttl_s)
            fresh &= have[:, None]
            for group, members, group_names in plan.gathers:
                # [n, members of the group, *shape] -> [members asked, n, *shape], C-contiguous
                taken = group.block.take(safe, axis=0).swapaxes(0, 1)[members]
                out.update(zip(group_names, taken))
        else:
            fresh = np.zeros((n, len(names)), dtype=bool)
        hits = int(np.count_nonzero(fresh))
        metrics.child(metrics.CACHE_REQUESTS, entity.value, "hit").inc(hits)
        metrics.child(metrics.CACHE_REQUESTS, entity.value, "miss").inc(n * len(names) - hits)
        tracing.annotate({"cache.hits": hits, "cache.misses": n * len(names) - hits})
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
        adding: list[FeatureSpec] = []
        used = self.nbytes
        for name in names:
            if name not in slab.group_of:
                spec = self.catalog.features[name]
                if used + slab.capacity * spec.row_bytes <= self.max_bytes:
                    adding.append(spec)
                    used += slab.capacity * spec.row_bytes
        if adding:
            slab.add_columns(adding)
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
            group = slab.group_of.get(name)
            if group is not None:
                group.block[target, group.member[name]] = np.asarray(fetched.columns[name])[cached]
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
