"""Model version order: which version is "latest", the one rule every tier uses.

Versions compare in *natural order*. A version is split into runs of digits and runs of
other characters; digit runs compare as integers, other runs as strings, and a digit run
sorts before a text run at the same position. So integer versions compare numerically
("10" > "9"), "1.10" > "1.9", "v10" > "v2", "2.0" > "2", "10" > "2.0" and dates in ISO form
order by date. Ties (e.g. "01" vs "1") fall back to plain string order, so the order is total.
"""

from __future__ import annotations

import re
from typing import Iterable

__all__ = ["VersionKey", "latest_version", "sort_versions", "version_key"]

_RUNS = re.compile(r"\d+|\D+")

VersionKey = tuple[tuple[tuple[int, int, str], ...], str]


def version_key(version: str) -> VersionKey:
    """Sort key of ``version`` in natural order (module docstring)."""
    parts = tuple((0, int(run), "") if run.isdigit() else (1, 0, run) for run in _RUNS.findall(version))
    return parts, version


def sort_versions(versions: Iterable[str]) -> list[str]:
    """``versions`` oldest first (latest last)."""
    return sorted(versions, key=version_key)


def latest_version(versions: Iterable[str]) -> str | None:
    """The greatest of ``versions`` in natural order; None when there are none."""
    return max(versions, key=version_key, default=None)
