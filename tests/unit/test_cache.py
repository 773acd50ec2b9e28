"""``contract.cache.BoundedCache``: the one bounded-cache policy."""

from __future__ import annotations

import pytest

from contract.cache import BoundedCache


def test_evicts_the_oldest_inserted_entry_past_max_entries() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    assert cache.put("a", 1) and cache.put("b", 2)
    assert cache.get("a") == 1  # a hit does not reorder
    assert cache.put("c", 3)
    assert len(cache) == 2 and "a" not in cache and cache.get("b") == 2 and cache.get("c") == 3


def test_putting_a_key_again_replaces_it_and_makes_it_newest() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    cache.put("c", 3)
    assert cache.get("a") == 10 and "b" not in cache and len(cache) == 2


def test_the_byte_bound_evicts_oldest_first_and_never_keeps_an_entry_larger_than_it() -> None:
    cache: BoundedCache[str, int] = BoundedCache(10, max_bytes=10)
    assert cache.put("a", 1, size=4) and cache.put("b", 2, size=4)
    assert cache.put("c", 3, size=4)  # 12 > 10: "a" goes
    assert "a" not in cache and cache.bytes == 8
    assert not cache.keeps(11) and not cache.put("huge", 4, size=11)
    assert "huge" not in cache and cache.bytes == 8 and len(cache) == 2
    cache.put("b", 20, size=1)
    assert cache.bytes == 5


def test_a_value_derived_from_one_not_kept_is_not_kept() -> None:
    cache: BoundedCache[str, int] = BoundedCache(4)
    assert not cache.put("a", 1, keep=False)
    assert len(cache) == 0 and cache.get("a") is None


def test_clear_empties_entries_and_bytes() -> None:
    cache: BoundedCache[str, int] = BoundedCache(4, max_bytes=100)
    cache.put("a", 1, size=7)
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0


@pytest.mark.parametrize("kwargs", [{"max_entries": 0}, {"max_entries": 1, "max_bytes": -1}])
def test_bounds_are_validated(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        BoundedCache(**kwargs)
