"""Byte floors the cluster benchmark measures root -> leaf traffic against.

Each tensor is costed at min(raw, LZ4 block) payload bytes, request features once ([1, ...]):

- the *per-model floor*: every model gets exactly its own inputs (a feature two models on
  one partition share is counted twice);
- the *partition floor*: every partition gets the union of its requested models' inputs
  once (what one call per partition can reach).

Pure functions over the workload's generated store; run on the benchmark's main thread
before any load phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import lz4.block
import numpy as np

from harness.load import RequestPool
from harness.demo_assets import DemoAssets


@dataclass(frozen=True, slots=True)
class Floors:
    """Mean bytes per request of the two floors over a request pool."""

    per_model: float
    per_partition: float


def payload_floor(array: np.ndarray) -> int:
    """min(raw, LZ4 block) bytes of one tensor's payload."""
    raw = np.ascontiguousarray(array).tobytes()
    return min(len(raw), len(lz4.block.compress(raw, store_size=False))) if raw else 0


def floors_of_request(
    sizes: Mapping[str, int], inputs: Mapping[str, Sequence[str]], partitions: Mapping[str, Sequence[str]]
) -> Floors:
    """Both floors for one request, given each feature's floor size and each model's inputs.

    ``partitions`` maps partition -> its requested models.
    """
    per_model = sum(sizes[n] for names in inputs.values() for n in names)
    per_partition = 0
    for models in partitions.values():
        union = {n for m in models for n in inputs[m]}
        per_partition += sum(sizes[n] for n in union)
    return Floors(float(per_model), float(per_partition))


def compute_floors(assets: DemoAssets, pool: RequestPool) -> Floors:
    """Both floors, averaged over the pool (every pool request asks for ``pool.models``)."""
    from root.catalog import Entity
    from root.local_store import LocalFeatureStore

    workload = assets.workload
    catalog = workload.catalog()
    store = LocalFeatureStore(assets.store, catalog)
    inputs = {m: workload.model_inputs(m) for m in pool.models}
    partitions: dict[str, list[str]] = {}
    for name, models in workload.partitions().items():
        wanted = [m for m in models if m in inputs]
        if wanted:
            partitions[name] = wanted
    needed = sorted({n for names in inputs.values() for n in names})
    req_names = [n for n in needed if catalog[n].entity is Entity.REQUEST]
    cand_names = [n for n in needed if catalog[n].entity is Entity.CANDIDATE]
    per_model, per_partition = [], []
    for request in pool.requests:
        columns: dict[str, np.ndarray] = {}
        if req_names:
            user = np.array([request.user_id], np.uint64)
            columns.update(store.fetch_sync(Entity.REQUEST, user, req_names).columns)
        if cand_names:
            ids = np.array(request.candidate_ids, np.uint64)
            columns.update(store.fetch_sync(Entity.CANDIDATE, ids, cand_names).columns)
        sizes = {name: payload_floor(columns[name]) for name in needed}
        floors = floors_of_request(sizes, inputs, partitions)
        per_model.append(floors.per_model)
        per_partition.append(floors.per_partition)
    return Floors(float(np.mean(per_model)), float(np.mean(per_partition)))
