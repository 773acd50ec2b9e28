"""Writes feature data into Redis or a Redis Cluster in the record layout ``root.redis_records`` reads.

Order of writes keeps readers safe: a load whose layout differs from the stored one first
deletes the stored layout digest (readers then fail with "no layout" instead of misreading)
and every old record of that entity, then writes records in batched pipelines (MSET), and
sets the layout digest last. Reloading with the same layout overwrites records in place.

A cluster gets the same keys: redis-py's cluster client splits each batch by hash slot
(``mset_nonatomic``: one MSET per slot, pipelined per master, masters concurrently); the
layout digest is still written last, once every record is acknowledged.

Runs on the caller's event loop (one asyncio client, closed before returning); packing
records is vectorised numpy per batch of rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from root.catalog import Entity, FeatureCatalog
from root.redis_cluster_store import CLUSTER_SCHEMES, ClusterUrl
from root.redis_records import (
    KEY_PREFIX_RULE,
    RecordLayout,
    entity_key_prefix,
    entity_keys,
    layout_key,
    valid_key_prefix,
)

DEFAULT_BATCH_ROWS = 1000


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """How a load writes to Redis."""

    key_prefix: str = "rl"
    """Key namespace; must match the store's ``key_prefix``."""
    batch_rows: int = DEFAULT_BATCH_ROWS
    """Records per MSET; one pipeline holds ``batches_per_pipeline`` of them."""
    batches_per_pipeline: int = 4
    """MSET commands sent per round trip."""
    flush: bool = False
    """Delete every existing record of each loaded entity first, even if the layout is unchanged."""

    def __post_init__(self) -> None:
        if not valid_key_prefix(self.key_prefix):
            raise ValueError(f"LoadOptions.key_prefix {KEY_PREFIX_RULE}, got {self.key_prefix!r}")
        if self.batch_rows < 1:
            raise ValueError(f"LoadOptions.batch_rows must be >= 1, got {self.batch_rows}")
        if self.batches_per_pipeline < 1:
            raise ValueError(f"LoadOptions.batches_per_pipeline must be >= 1, got {self.batches_per_pipeline}")


@dataclass(frozen=True, slots=True)
class EntityLoad:
    """What one entity's load wrote."""

    entity: Entity
    records: int
    record_bytes: int
    deleted: int
    """Old records removed first (layout change or ``flush``)."""
    layout_digest: str


Client = aioredis.Redis | RedisCluster


def open_client(url: str) -> Client:
    """A writing client for ``url``: ``redis://...`` (one server) or ``redis-cluster://...``."""
    if url.startswith(CLUSTER_SCHEMES):
        address = ClusterUrl.parse(url)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
            username=address.username,
            password=address.password,
        )
    return aioredis.Redis.from_url(url)


async def load_entity(
    client: Client,
    catalog: FeatureCatalog,
    entity: Entity,
    columns: Mapping[str, np.ndarray],
    ids: np.ndarray | None = None,
    *,
    options: LoadOptions = LoadOptions(),
    progress: Callable[[int, int], None] | None = None,
) -> EntityLoad:
    """Write one entity's records: ``columns[name]`` is ``[count, *shape]``, row i for ``ids[i]``.

    ``ids`` defaults to ``0..count-1`` (the row index is the entity id). ``progress(done,
    total)`` is called after each pipeline of rows.
    """
    layout = RecordLayout.from_catalog(catalog, entity)
    missing = [n for n in layout.names if n not in columns]
    if missing:
        raise ValueError(f"columns lack {entity.value} features {missing}")
    count = len(columns[layout.names[0]])
    for name in layout.names:
        spec = catalog[name]
        col = columns[name]
        if col.shape != (count, *spec.shape):
            raise ValueError(f"column {name!r} has shape {col.shape}, expected {(count, *spec.shape)}")
    ids = np.arange(count, dtype=np.uint64) if ids is None else np.asarray(ids, dtype=np.uint64)
    if ids.shape != (count,):
        raise ValueError(f"ids has shape {ids.shape}, expected ({count},)")

    lkey = layout_key(options.key_prefix, entity)
    stored = await client.get(lkey)
    deleted = 0
    if options.flush or (stored is not None and stored != layout.digest.encode()):
        await client.delete(lkey)
        deleted = await delete_records(client, options.key_prefix, entity)

    prefix = entity_key_prefix(options.key_prefix, entity)
    step = options.batch_rows
    per_pipe = step * options.batches_per_pipeline
    for start in range(0, count, per_pipe):
        if isinstance(client, RedisCluster):
            rows = slice(start, min(start + per_pipe, count))
            await client.mset_nonatomic(dict(zip(entity_keys(prefix, ids[rows]), layout.pack(columns, rows))))
        else:
            async with client.pipeline(transaction=False) as pipe:
                for lo in range(start, min(start + per_pipe, count), step):
                    rows = slice(lo, min(lo + step, count))
                    pipe.mset(dict(zip(entity_keys(prefix, ids[rows]), layout.pack(columns, rows))))
                await pipe.execute()
        if progress is not None:
            progress(min(start + per_pipe, count), count)
    await client.set(f"{lkey}:json", json.dumps(layout.description(), sort_keys=True))
    await client.set(lkey, layout.digest)
    return EntityLoad(entity, count, layout.record_size, deleted, layout.digest)


async def delete_records(client: Client, key_prefix: str, entity: Entity, batch: int = 1000) -> int:
    """UNLINK every ``{prefix}:{entity}:*`` record (SCAN, bounded by the key count)."""
    deleted = 0
    pattern = entity_key_prefix(key_prefix, entity) + b"*"
    chunk: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=batch):
        chunk.append(key)
        if len(chunk) >= batch:
            deleted += await client.unlink(*chunk)
            chunk = []
    if chunk:
        deleted += await client.unlink(*chunk)
    return deleted
