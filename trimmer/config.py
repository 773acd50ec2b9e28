"""Tunables of the Feature Trimmer: one frozen dataclass, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["TrimmerConfig"]


def _positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"TrimmerConfig.{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"TrimmerConfig.{name} must be {bound}, got {value!r}")


@dataclass(frozen=True, slots=True)
class TrimmerConfig:
    """How the trimmer watches and reloads its bundle files."""

    debounce_s: float = 0.05
    """Quiet time after the last file event before a bundle is reloaded (bursts coalesce)."""
    max_debounce_s: float = 0.3
    """Upper bound on the delay a continuous event stream can impose on a reload."""
    recheck_interval_s: float = 30.0
    """Period of the re-check that reloads changed files whose events were lost (0 = off)."""
    max_file_bytes: int = 64 * 1024 * 1024
    """A bundle file larger than this is a failed load (guards against a runaway file)."""

    def __post_init__(self) -> None:
        _positive("debounce_s", self.debounce_s, allow_zero=True)
        _positive("max_debounce_s", self.max_debounce_s, allow_zero=True)
        if self.max_debounce_s < self.debounce_s:
            raise ValueError(
                f"TrimmerConfig.max_debounce_s must be >= debounce_s ({self.debounce_s}), "
                f"got {self.max_debounce_s!r}"
            )
        _positive("recheck_interval_s", self.recheck_interval_s, allow_zero=True)
        if isinstance(self.max_file_bytes, bool) or not isinstance(self.max_file_bytes, int) or self.max_file_bytes <= 0:
            raise ValueError(f"TrimmerConfig.max_file_bytes must be a positive int, got {self.max_file_bytes!r}")
