"""Packed feature records in Redis: layout, keys and the read path every Redis backend shares.

Record layout: for each entity type, every catalog feature of that entity in catalog order,
each ``spec.row_bytes`` wide, little-endian, no padding (a numpy structured dtype). A batch
of N records is joined into one buffer and viewed as ``[N]`` records; each requested feature
is then one vectorised gather into a contiguous ``[N, *shape]`` column. The layout's digest
is stored at ``{prefix}:layout:{entity}`` by the loader and read in the same round trip as
the records on every fetch, so a catalog change or a reload with another catalog fails
loudly (``FeatureStoreError``) instead of misreading bytes.

``PackedRecordStore`` holds what single Redis (``root.redis_store``) and Redis Cluster
(``root.redis_cluster_store``) share: id dedup, decoding, the layout check, the fetch
timeout, error accounting and the metrics; a backend only implements ``_read`` (the layout
digest and the records of a list of keys, in one round trip per server). Every method runs
on the event loop that first used the store.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
import hashlib
import json
import logging
import operator
import time
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any, Mapping, Sequence, cast

import numpy as np
import redis.asyncio as aioredis
from prometheus_client import Counter, Histogram
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from root.catalog import Entity, FeatureCatalog
from root.feature_store import FeatureStoreError, FetchResult
from transport import tracing

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1
"""Bumped when the record encoding itself changes (not the catalog)."""

FETCH_SECONDS = Histogram(
    "rootleaf_root_redis_fetch_seconds",
    "Redis feature fetch latency (one round trip per server, retries included), successful or not",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)
KEYS_TOTAL = Counter(
    "rootleaf_root_redis_keys_total", "Distinct entity keys read from Redis", ["entity"]
)
MISSING_TOTAL = Counter(
    "rootleaf_root_redis_missing_total", "Keys Redis did not have (defaults used)", ["entity"]
)
ERRORS_TOTAL = Counter(
    "rootleaf_root_redis_errors_total",
    "Failed Redis fetches by kind (timeout, connection, layout, corrupt, redis, cluster)",
    ["kind"],
)


KEY_PREFIX_RULE = "must be non-empty printable ASCII without spaces or glob characters (*?[]\\)"


def valid_key_prefix(prefix: object) -> bool:
    """Prefixes are used in SCAN patterns by the loader, so glob characters are refused."""
    return (
        isinstance(prefix, str)
        and bool(prefix)
        and prefix.isascii()
        and prefix.isprintable()
        and not any(c in prefix for c in " *?[]\\")
    )


def entity_key_prefix(key_prefix: str, entity: Entity) -> bytes:
    """``{prefix}:{entity}:``; an id's key is this plus its decimal id."""
    return f"{key_prefix}:{entity.value}:".encode()


def layout_key(key_prefix: str, entity: Entity) -> str:
    return f"{key_prefix}:layout:{entity.value}"


def entity_keys(prefix: bytes, ids: np.ndarray) -> list[bytes]:
    """Keys for ``ids``: one %-format over the whole batch and one split, both in C."""
    n = len(ids)
    if n == 0:
        return []
    # NUL never occurs in the prefix or in a decimal id, so it is a safe separator.
    return ((prefix + b"%d\x00") * n % tuple(ids.tolist())).split(b"\x00")[:n]


@dataclass(frozen=True, slots=True)
class RecordLayout:
    """The packed record of one entity type, derived from the catalog."""

    entity: Entity
    names: tuple[str, ...]
    """Features of the entity, in catalog order."""
    dtype: np.dtype
    """Structured dtype of one record: one little-endian field per feature, no padding."""
    fields: tuple[tuple[str, str, tuple[int, ...]], ...]
    """Per feature: name, little-endian dtype string (``<f4``), per-entity shape."""
    defaults: np.ndarray
    """One record (shape ``(1,)``) holding every feature's default."""
    digest: str
    """Hash of the layout description; stored in Redis beside the records."""

    @classmethod
    def from_catalog(cls, catalog: FeatureCatalog, entity: Entity) -> "RecordLayout":
        specs = [catalog[n] for n in catalog.names(entity)]
        if not specs:
            raise ValueError(f"catalog has no {entity.value} features")
        fields = tuple((s.name, s.np_dtype.newbyteorder("<").str, s.shape) for s in specs)
        dtype = np.dtype(list(fields))  # packed: numpy adds no padding unless align=True
        if dtype.itemsize != sum(s.row_bytes for s in specs):
            raise ValueError(f"{entity.value} record layout is not packed: {dtype}")
        defaults = np.zeros(1, dtype=dtype)
        for s in specs:
            defaults[s.name] = s.default
        description = cls._describe(entity, fields)
        digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
        return cls(entity, tuple(s.name for s in specs), dtype, fields, defaults, digest)

    @staticmethod
    def _describe(entity: Entity, fields: tuple[tuple[str, str, tuple[int, ...]], ...]) -> dict[str, Any]:
        return {
            "version": LAYOUT_VERSION,
            "entity": entity.value,
            "fields": [[name, dtype, list(shape)] for name, dtype, shape in fields],
        }

    @property
    def record_size(self) -> int:
        return self.dtype.itemsize

    def description(self) -> dict[str, Any]:
        """Human-readable layout (what the digest hashes), stored for operators."""
        return {**self._describe(self.entity, self.fields), "digest": self.digest, "record_bytes": self.record_size}

    def pack(self, columns: Mapping[str, np.ndarray], rows: slice) -> list[bytes]:
        """Records for ``rows`` of full columns (one ``[count, *shape]`` array per feature)."""
        first = columns[self.names[0]][rows]
        records = np.empty(len(first), dtype=self.dtype)
        for name in self.names:
            records[name] = columns[name][rows]
        out: list[bytes] = records.view(np.dtype((np.void, self.record_size))).tolist()
        return out

    def unpack(self, values: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        """Records for MGET ``values`` (None = missing -> defaults), and the present mask."""
        n = len(values)
        present = np.fromiter(map(operator.is_not, values, repeat(None)), dtype=bool, count=n)
        n_present = int(np.count_nonzero(present))
        # The values present (usually all of them: no copy then). Each one's own length is
        # checked before anything is joined: a total alone would let one value 4 bytes short
        # and another 4 bytes long shift fields between entities.
        stored = cast("list[bytes]", values if n_present == n else list(compress(values, present.tolist())))
        lengths = np.fromiter(map(len, stored), dtype=np.intp, count=n_present)
        wrong = lengths != self.record_size
        if wrong.any():
            raise FeatureStoreError(
                f"redis {self.entity.value} records are corrupt: {int(np.count_nonzero(wrong))} of {n_present} "
                f"values are not {self.record_size} bytes (the first has {int(lengths[wrong.argmax()])}; "
                f"layout {self.digest})"
            )
        blob = b"".join(stored)
        found = np.frombuffer(blob, dtype=self.dtype, count=n_present)
        if n_present == n:
            return found, present
        records = np.repeat(self.defaults, n)
        records[present] = found
        return records, present


def connection_pool(url: str, pool_size: int, timeout_s: float) -> aioredis.BlockingConnectionPool:
    """The pool every backend uses per server: bounded, every wait bounded by ``timeout_s``."""
    return aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=timeout_s,  # waiting for a free pooled connection
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        # One immediate retry on a connection error only: a pooled connection whose server
        # went away (restart, failover) is re-opened once instead of failing the request.
        # Timeouts are not retried: the request's deadline is short and the root maps the
        # error to UNAVAILABLE.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )


class PackedRecordStore(ABC):
    """``FeatureStore`` over packed records; subclasses implement ``_read`` and ``close``."""

    def __init__(self, catalog: FeatureCatalog, *, pool_size: int, timeout_s: float, key_prefix: str) -> None:
        owner = type(self).__name__
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"{owner}.pool_size must be a positive int, got {pool_size!r}")
        if not timeout_s > 0:
            raise ValueError(f"{owner}.timeout_s must be > 0, got {timeout_s!r}")
        if not valid_key_prefix(key_prefix):
            raise ValueError(f"{owner}.key_prefix {KEY_PREFIX_RULE}, got {key_prefix!r}")
        self.catalog = catalog
        self.pool_size = pool_size
        self.timeout_s = float(timeout_s)
        self.key_prefix = key_prefix
        self.layouts: dict[Entity, RecordLayout] = {
            e: RecordLayout.from_catalog(catalog, e) for e in Entity if catalog.names(e)
        }
        self._names = {e: frozenset(layout.names) for e, layout in self.layouts.items()}
        self._prefixes = {e: entity_key_prefix(key_prefix, e) for e in Entity}
        self._layout_keys = {e: layout_key(key_prefix, e) for e in Entity}
        self._failing = False

    @abstractmethod
    async def _read(self, layout_key: str, keys: list[bytes]) -> tuple[bytes | None, list[bytes | None]]:
        """The stored layout digest and the value of each key (None = missing), in key order.
        Redis errors propagate; the caller bounds the whole call by ``timeout_s``."""

    @abstractmethod
    def _where(self) -> str:
        """The server(s), for messages (never a password)."""

    @abstractmethod
    async def close(self) -> None:
        """Close the client connections."""

    async def fetch(self, entity: Entity, ids: np.ndarray, names: Sequence[str]) -> FetchResult:
        entity = Entity(entity)
        layout = self.layouts.get(entity)
        known = self._names.get(entity, frozenset())
        unknown = [n for n in names if n not in known]
        if unknown:
            raise FeatureStoreError(f"not {entity.value} features of the catalog: {unknown}")
        ids = np.asarray(ids, dtype=np.uint64).reshape(-1)
        if layout is None or not names:
            return FetchResult({}, 0)
        if ids.size == 0:
            return FetchResult({n: np.empty((0, *self.catalog[n].shape), self.catalog[n].np_dtype) for n in names}, 0)
        # Duplicates are read once. Without any (the usual case) keys go in request order;
        # with some, the unique records are re-expanded by one whole-record gather.
        unique, inverse = np.unique(ids, return_inverse=True)
        has_duplicates = len(unique) < len(ids)
        started = tracing.clock()
        values = await self._records(layout, entity_keys(self._prefixes[entity], unique if has_duplicates else ids))
        tracing.record("redis read", started, {"db.system": "redis", "db.redis.keys": len(values), "entity": entity.value})
        try:
            records, present = layout.unpack(values)
        except FeatureStoreError:
            ERRORS_TOTAL.labels("corrupt").inc()
            raise
        n_missing_keys = len(values) - int(np.count_nonzero(present))
        KEYS_TOTAL.labels(entity.value).inc(len(values))
        missing = 0
        if n_missing_keys:
            MISSING_TOTAL.labels(entity.value).inc(n_missing_keys)
            missing = int(np.count_nonzero(~present[inverse])) if has_duplicates else n_missing_keys
        if has_duplicates:
            records = records[inverse]
        # Per feature one strided copy of its field: a contiguous [N, *shape] column (a
        # plain strided copy is ~2.5x cheaper than a fancy-index gather per feature).
        columns = {n: records[n].copy() for n in names}
        return FetchResult(columns, missing)

    async def _records(self, layout: RecordLayout, keys: list[bytes]) -> list[bytes | None]:
        """``_read`` bounded by ``timeout_s``, errors counted and mapped, layout checked."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                stored, values = await self._read(self._layout_keys[layout.entity], keys)
        except (RedisTimeoutError, TimeoutError) as exc:
            raise self._failed("timeout", f"redis fetch timed out after {self.timeout_s:g} s") from exc
        except (RedisConnectionError, OSError) as exc:
            raise self._failed("connection", f"redis unreachable at {self._where()}: {exc}") from exc
        except RedisError as exc:
            raise self._failed("redis", f"redis error: {exc}") from exc
        finally:
            FETCH_SECONDS.observe(time.perf_counter() - start)
        self._check_layout(layout, stored)
        if self._failing:
            self._failing = False
            log.info("redis feature store at %s answers again", self._where())
        return values

    def _check_layout(self, layout: RecordLayout, stored: bytes | None) -> None:
        if stored is None:
            raise self._failed(
                "layout",
                f"redis has no layout at {self._layout_keys[layout.entity]!r}: "
                f"load the features first (rootleaf features load)",
            )
        if stored.decode(errors="replace") != layout.digest:
            raise self._failed(
                "layout",
                f"redis {layout.entity.value} records were written with layout "
                f"{stored[:64].decode(errors='replace')!r}, "
                f"the catalog expects {layout.digest!r}: reload the features with this catalog",
            )

    def _failed(self, kind: str, message: str) -> FeatureStoreError:
        ERRORS_TOTAL.labels(kind).inc()
        if not self._failing:
            self._failing = True
            log.warning("redis feature store failing (%s): %s", kind, message)
        return FeatureStoreError(message)

    async def check(self) -> None:
        """``check_layout``: Redis answers and holds records of the catalog's layout."""
        await self.check_layout()

    async def check_layout(self) -> None:
        """Verify every entity's stored layout now (start-up); raises ``FeatureStoreError``."""
        for layout in self.layouts.values():
            await self._records(layout, [])


def safe_url(url: str) -> str:
    """``url`` without a password embedded in it (for logs and errors)."""
    head, sep, tail = url.rpartition("@")
    return f"{url.split('://')[0]}://***@{tail}" if sep else url
