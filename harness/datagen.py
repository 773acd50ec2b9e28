"""Demo feature data: realistic, seeded column tables for every catalog feature.

``generate_table`` is a pure function of ``(spec, count, seed)``: the random stream is
derived from the seed and the feature's name, so every feature is reproducible on its own
and the local store and the Redis loader hold identical data. ``generate_local_store``
writes one ``.npy`` column file per feature for ``LocalFeatureStore``; ``load_generated``
loads the same rows into Redis. Runs on the caller's thread; no shared state.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.local_store import column_path
from harness.load import Progress
from root.redis_loader import EntityLoad, LoadOptions, load_entity, open_client

MANIFEST = "store.json"
# Largest id an ``ids`` feature draws (vocabulary size of the demo id spaces).
ID_VOCABULARY = 1_000_000


def _rng(spec: FeatureSpec, seed: int) -> np.random.Generator:
    # A stable digest of the name (Python's hash() is salted per process).
    digest = hashlib.sha256(spec.name.encode("utf-8")).digest()
    return np.random.default_rng([seed & 0xFFFFFFFF, *np.frombuffer(digest[:16], dtype="<u4").tolist()])


def _values(spec: FeatureSpec, count: int, rng: np.random.Generator) -> np.ndarray:
    shape = (count, *spec.shape)
    if spec.kind == "scalar":
        return rng.normal(0.0, 1.0, shape)
    if spec.kind == "ratio":
        return rng.beta(2.0, 5.0, shape)
    if spec.kind == "counter":
        # Heavy-tailed non-negative counts: most small, a few very large.
        return np.floor(rng.lognormal(1.0, 1.5, shape))
    if spec.kind == "embedding":
        return rng.normal(0.0, 0.1, shape)
    # ids: per row a list of ids of varying length, padded with zeros at the tail.
    width = spec.shape[-1] if spec.shape else 1
    values = rng.integers(1, ID_VOCABULARY, shape)
    lengths = rng.integers(0, width + 1, (count, *spec.shape[:-1]))
    padded = np.arange(width) >= lengths[..., None]
    values[padded.reshape(values.shape)] = 0
    return values


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "b":
        return values > 0
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def generate_table(spec: FeatureSpec, count: int, seed: int) -> np.ndarray:
    """``count`` rows of ``spec``: an array ``[count, *spec.shape]`` in the catalog dtype."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = _rng(spec, seed)
    values = _values(spec, count, rng)
    if spec.zero_fraction > 0:
        if spec.kind == "ids":
            # Sparse id lists: whole rows empty.
            empty = rng.random((count, *spec.shape[:-1])) < spec.zero_fraction
            values[empty] = 0
        else:
            values[rng.random(values.shape) < spec.zero_fraction] = 0
    return _cast(values, spec.np_dtype)


def generate_local_store(catalog: FeatureCatalog, directory: str | Path, users: int, items: int, seed: int) -> None:
    """Write every catalog feature's column: request features ``users`` rows, candidate ``items``."""
    directory = Path(directory)
    for entity in Entity:
        (directory / entity.value).mkdir(parents=True, exist_ok=True)
    for spec in catalog.features.values():
        rows = users if spec.entity is Entity.REQUEST else items
        path = column_path(directory, spec)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, generate_table(spec, rows, seed))
        os.replace(tmp, path)
    manifest = {"users": users, "items": items, "seed": seed, "features": len(catalog)}
    (directory / MANIFEST).write_text(json.dumps(manifest, sort_keys=True) + "\n", encoding="utf-8")


def generated_columns(catalog: FeatureCatalog, entity: Entity, count: int, seed: int) -> dict[str, np.ndarray]:
    """The same rows the local store holds: ``generate_table`` per feature."""
    return {n: generate_table(catalog[n], count, seed) for n in catalog.names(entity)}


async def load_generated(
    url: str,
    catalog: FeatureCatalog,
    *,
    users: int,
    items: int,
    seed: int,
    options: LoadOptions = LoadOptions(),
    progress: bool = True,
) -> list[EntityLoad]:
    """Generate a workload's data (users = request entities, items = candidates) and load it
    into ``url`` (``redis://...`` or ``redis-cluster://host:port,...``)."""
    counts = {Entity.REQUEST: users, Entity.CANDIDATE: items}
    for entity, count in counts.items():
        if count < 0:
            raise ValueError(f"{'users' if entity is Entity.REQUEST else 'items'} must be >= 0, got {count}")
    client = open_client(url)
    try:
        results = []
        for entity, count in counts.items():
            if not catalog.names(entity):
                continue
            columns = generated_columns(catalog, entity, count, seed)
            bar = Progress(f"load {entity.value}", enabled=progress)
            results.append(await load_entity(client, catalog, entity, columns, options=options, progress=bar))
            bar.done(f"{count} rows")
            del columns
        return results
    finally:
        await client.aclose()
