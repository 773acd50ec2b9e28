"""File-backed feature store: one memory-mapped ``.npy`` column per feature.

Layout: ``<dir>/<entity>/<feature>.npy`` with shape ``[rows, *spec.shape]`` (``column_path``;
any writer of ``.npy`` files fits, the demo data generator is one). Entity id ``i`` is row ``i``; ids at or beyond the
row count get the feature's default and are counted as missing. Reads are vectorised
fancy indexing on the memory maps. Columns are opened once at construction and only read
afterwards, so the store is safe to use from the event loop and from worker threads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.feature_store import FeatureStoreError, FetchResult

log = logging.getLogger(__name__)


def column_path(directory: Path, spec: FeatureSpec) -> Path:
    """Where the local store keeps ``spec``'s column."""
    if "/" in spec.name or "\\" in spec.name or spec.name in (".", ".."):
        raise ValueError(f"feature name {spec.name!r} cannot be a file name")
    return Path(directory) / spec.entity.value / f"{spec.name}.npy"


class LocalFeatureStore:
    """Columns of a local directory, memory-mapped read-only."""

    def __init__(self, directory: str | Path, catalog: FeatureCatalog) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FeatureStoreError(f"local feature store {self.directory} is not a directory")
        self.catalog = catalog
        self._columns: dict[str, np.ndarray] = {}
        absent = []
        for spec in catalog.features.values():
            path = column_path(self.directory, spec)
            if not path.exists():
                absent.append(spec.name)
                continue
            column = np.load(path, mmap_mode="r", allow_pickle=False)
            if column.shape[1:] != spec.shape or column.dtype != spec.np_dtype:
                raise FeatureStoreError(
                    f"{path}: shape {column.shape[1:]} dtype {column.dtype} does not match the catalog "
                    f"({spec.shape}, {spec.dtype})"
                )
            # A plain ndarray view of the mapping: indexing it skips np.memmap's Python-level
            # __getitem__/__array_finalize__ (measured ~7% of the root's CPU on w1).
            self._columns[spec.name] = np.asarray(column)
        if absent:
            # Served as defaults (counted missing) rather than failing the root.
            log.warning("local feature store %s has no column for %d features: %s", self.directory, len(absent), absent[:10])

    def rows(self, name: str) -> int:
        """Rows stored for feature ``name`` (0 when its column is absent)."""
        column = self._columns.get(name)
        return 0 if column is None else int(column.shape[0])

    def _read(
        self, spec: FeatureSpec, rows: np.ndarray, present_by_length: dict[int, np.ndarray | None]
    ) -> tuple[np.ndarray, int]:
        """Column ``spec`` at ``rows``; ``present_by_length`` memoises, per column length, which
        rows exist (None = all), since the columns of one entity usually share a length."""
        column = self._columns.get(spec.name)
        n = len(rows)
        if column is None:
            return np.full((n, *spec.shape), spec.default, dtype=spec.np_dtype), n
        length = column.shape[0]
        if length not in present_by_length:
            present = rows < length
            present_by_length[length] = None if present.all() else present
        present = present_by_length[length]
        if present is None:
            return column[rows], 0
        out = np.full((n, *spec.shape), spec.default, dtype=spec.np_dtype)
        out[present] = column[rows[present]]
        return out, int(n - np.count_nonzero(present))

    async def fetch(self, entity: Entity, ids: np.ndarray, names: Sequence[str]) -> FetchResult:
        return self.fetch_sync(entity, ids, names)

    def fetch_sync(self, entity: Entity, ids: np.ndarray, names: Sequence[str]) -> FetchResult:
        """``fetch`` without the coroutine (the work is synchronous anyway)."""
        ids = np.asarray(ids, dtype=np.uint64)
        # Ids past the largest intp are clipped to it: no column is that long, so they count missing.
        rows = np.minimum(ids, np.uint64(np.iinfo(np.intp).max)).astype(np.intp)
        present_by_length: dict[int, np.ndarray | None] = {}
        columns: dict[str, np.ndarray] = {}
        missing = 0
        for name in names:
            spec = self.catalog.features.get(name)
            if spec is None:
                raise FeatureStoreError(f"feature {name!r} is not in the catalog")
            if spec.entity is not entity:
                raise FeatureStoreError(f"feature {name!r} belongs to {spec.entity.value}, not {entity.value}")
            columns[name], miss = self._read(spec, rows, present_by_length)
            missing = max(missing, miss)
        return FetchResult(columns, missing)

    async def check(self) -> None:
        """Nothing to do: the directory and every column were checked when the store opened."""

    async def close(self) -> None:
        self._columns.clear()
