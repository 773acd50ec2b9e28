"""Redis feature store: one packed record per entity id, fetched with one pipelined MGET.

The record layout, decoding and layout check live in ``root.redis_records``; this module
only talks to one Redis server: the layout digest and the records go in one pipeline
(``GET`` + ``MGET``), one round trip per fetch.

Concurrency: the redis-py asyncio client and its connection pool are created lazily on the
first fetch and belong to that event loop (the root's serving loop); every method must run
on it. Timeouts and connection errors raise ``FeatureStoreError`` (the root answers
UNAVAILABLE); redis-py drops a connection that failed, so the store recovers by itself when
Redis answers again.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from root.catalog import FeatureCatalog
from root.redis_records import PackedRecordStore, connection_pool, safe_url

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class RedisFeatureStore(PackedRecordStore):
    """``FeatureStore`` backed by one Redis server (see ``root.redis_records`` for the layout)."""

    def __init__(
        self,
        url: str,
        catalog: FeatureCatalog,
        *,
        pool_size: int = 16,
        timeout_s: float = 0.5,
        key_prefix: str = "rl",
    ) -> None:
        if not isinstance(url, str) or not url.startswith(REDIS_SCHEMES):
            raise ValueError(f"RedisFeatureStore.url must be a redis://, rediss:// or unix:// URL, got {url!r}")
        super().__init__(catalog, pool_size=pool_size, timeout_s=timeout_s, key_prefix=key_prefix)
        self.url = url
        self._client: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _redis(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None:
            self._client = aioredis.Redis.from_pool(connection_pool(self.url, self.pool_size, self.timeout_s))
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("RedisFeatureStore is bound to the event loop that first used it")
        return self._client

    async def _read(self, layout_key: str, keys: list[bytes]) -> tuple[bytes | None, list[bytes | None]]:
        async with self._redis().pipeline(transaction=False) as pipe:
            pipe.get(layout_key)
            if keys:
                pipe.mget(keys)
            stored, *rest = await pipe.execute()
        values: list[bytes | None] = rest[0] if rest else []
        return stored, values

    def _where(self) -> str:
        return safe_url(self.url)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
