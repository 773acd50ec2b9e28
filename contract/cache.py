"""The one bounded-cache policy every tier's memo tables use.

A ``BoundedCache`` holds at most ``max_entries`` entries and, when ``max_bytes`` is given, at
most that many bytes as each ``put`` declares them; past either bound the oldest-inserted
entries go first. A hit is one dict lookup (nothing is reordered on a hit: the caches sit on
per-tensor and per-request paths), so a hot entry is evicted after enough newer ones and
rebuilt once.

*Kept* means stored: ``put`` answers whether the value was kept. A value derived from one
that was not kept is not kept either (pass ``keep=False``): what is not kept is new every
request, and memoising what derives from it would only churn the cache. Caches compare keys
as dict keys do; keys of identity-hashed objects stay alive while their entries do, so an
identity is never reused under a live key.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, Hashable, TypeVar

__all__ = ["BoundedCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """Memo table bounded in entries (and optionally bytes); evicts oldest-inserted first.
    Safe to share between threads: ``get`` is a lock-free dict lookup, ``put`` and ``clear``
    hold a lock (they run on misses)."""

    __slots__ = ("_data", "_sizes", "_bytes", "_lock", "max_entries", "max_bytes", "get")

    def __init__(self, max_entries: int, *, max_bytes: int | None = None) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: dict[K, V] = {}
        self._sizes: dict[K, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.get: Callable[[K], V | None] = self._data.get
        """The value under ``key``, or None (a plain dict lookup)."""

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    @property
    def bytes(self) -> int:
        """The sizes the kept entries were put with, summed."""
        return self._bytes

    def keeps(self, size: int = 0) -> bool:
        """Whether a ``put`` of ``size`` bytes would keep its value: it fits ``max_bytes``."""
        return self.max_bytes is None or size <= self.max_bytes

    def put(self, key: K, value: V, *, size: int = 0, keep: bool = True) -> bool:
        """Store ``value`` under ``key``, evicting the oldest entries until both bounds hold;
        True when kept (``keep`` and ``keeps(size)``)."""
        if not (keep and self.keeps(size)):
            return False
        max_bytes = self.max_bytes
        data, sizes = self._data, self._sizes
        with self._lock:
            if key in data:
                self._bytes -= sizes.pop(key, 0)
                del data[key]
            while data and (
                len(data) >= self.max_entries or (max_bytes is not None and self._bytes + size > max_bytes)
            ):
                oldest = next(iter(data))
                del data[oldest]
                self._bytes -= sizes.pop(oldest, 0)
            data[key] = value
            if size:
                sizes[key] = size
                self._bytes += size
        return True

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self._bytes = 0
