"""Builds the root's feature store from its config: backend, then the cache in front.

The Redis backends are imported only when configured, so a root on the local store never
loads the Redis client.
"""

from __future__ import annotations

import importlib

from root.cache import CachedFeatureStore
from root.catalog import FeatureCatalog
from root.config import FeatureStoreConfig, CacheConfig
from root.feature_store import FeatureStore
from root.local_store import LocalFeatureStore


def open_backend(config: FeatureStoreConfig, catalog: FeatureCatalog) -> FeatureStore:
    """The configured backend, without a cache."""
    if config.kind == "local":
        assert config.path is not None  # validated by FeatureStoreConfig
        return LocalFeatureStore(config.path, catalog)
    if config.kind == "redis-cluster":
        cls = importlib.import_module("root.redis_cluster_store").RedisClusterFeatureStore
    else:
        cls = importlib.import_module("root.redis_store").RedisFeatureStore
    store: FeatureStore = cls(
        config.url,
        catalog,
        pool_size=config.pool_size,
        timeout_s=config.timeout_ms / 1000.0,
        key_prefix=config.key_prefix,
    )
    return store


def open_feature_store(config: FeatureStoreConfig, cache: CacheConfig, catalog: FeatureCatalog) -> FeatureStore:
    """Backend plus cache. With ``cache.max_bytes = 0`` the cache holds nothing and passes
    every fetch through (still timing the store and counting misses)."""
    backend = open_backend(config, catalog)
    return CachedFeatureStore(backend, catalog, max_bytes=cache.max_bytes, ttl_s=cache.ttl_s)
