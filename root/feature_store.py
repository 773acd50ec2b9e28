"""The feature-store interface every backend implements (local files, Redis, ...).

Stores are columnar: a batch get for N entity ids returns, per feature, one array of shape
``[N, *spec.shape]`` in the catalog dtype, built with vectorised numpy (no per-id Python
loops). Ids the store does not know get the feature's default and are counted in
``FetchResult.missing``. Methods are coroutines: remote stores do I/O on the root's event
loop; local stores may answer synchronously inside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np

from root.catalog import Entity


class FeatureStoreError(Exception):
    """The store could not answer (unreachable, timed out, corrupt); the request fails UNAVAILABLE."""


@dataclass(frozen=True, slots=True)
class FetchResult:
    """Columns for one batch get."""

    columns: Mapping[str, np.ndarray]
    """Feature name -> array ``[len(ids), *shape]``."""
    missing: int
    """How many of the requested ids the store did not have (defaults were used)."""


class FeatureStore(Protocol):
    """Batch reads of named features for entity ids."""

    async def fetch(self, entity: Entity, ids: np.ndarray, names: Sequence[str]) -> FetchResult:
        """Features ``names`` (all of ``entity``) for ``ids`` (uint64, any order, may repeat)."""
        ...

    async def check(self) -> None:
        """Verify now that the store can answer (the root calls it at start-up); raises
        ``FeatureStoreError`` naming what is wrong."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...
