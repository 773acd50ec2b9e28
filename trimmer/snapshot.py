"""Trim decisions and the consolidated map (an immutable snapshot of every bundle).

``build_snapshot`` runs on the loading thread after a bundle load and precomputes every
answer a lookup can give (one ``TrimDecision`` per exact version plus one per model for
"latest"), so a lookup is two dict probes and no allocation. A snapshot is never mutated
after it is built; the trimmer swaps the reference under the write side of its lock.

Precedence: when a model appears in several bundles, the bundle whose *name* sorts first
(plain string order) provides all of that model's versions; the others' entries for it
are ignored (never merged), and each such shadowing is reported as a ``Conflict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

from contract.bundle_file import BundleMap

__all__ = [
    "Conflict", "DecisionKind", "ModelEntry", "Snapshot", "TrimDecision", "UNSERVED", "UNTRIMMED", "build_snapshot",
]

DecisionKind = Literal["exact", "latest", "untrimmed", "unserved"]


@dataclass(frozen=True, slots=True)
class TrimDecision:
    """Which features a model version receives.

    ``features`` None means untrimmed (every feature passes); ``version`` is the version
    whose allowlist applied (None when untrimmed); ``kind`` says which rule matched.
    """

    features: frozenset[str] | None
    version: str | None
    kind: DecisionKind

    @property
    def trimmed(self) -> bool:
        return self.features is not None


UNTRIMMED = TrimDecision(features=None, version=None, kind="untrimmed")
UNSERVED = TrimDecision(features=frozenset(), version=None, kind="unserved")
"""No version of the model's bundle is served (the caller must not send the request)."""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """Everything a lookup needs for one model, precomputed."""

    bundle: str
    """The bundle that provides this model (after precedence)."""
    exact: Mapping[str, TrimDecision]
    """version -> decision of kind "exact"."""
    latest: TrimDecision
    """Decision of kind "latest" for an omitted or unknown version."""
    versions: tuple[str, ...]
    """Known versions, oldest first."""
    latest_of: Mapping[str, TrimDecision]
    """version -> decision of kind "latest" for that version (when newer ones are not served)."""
    unserved: Mapping[str, TrimDecision]
    """version -> decision of kind "unserved" (the version is known but not served)."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """A model listed by more than one bundle; ``winner`` provides it."""

    model: str
    winner: str
    shadowed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The consolidated map: model -> precomputed decisions, plus precedence conflicts."""

    models: Mapping[str, ModelEntry]
    conflicts: tuple[Conflict, ...]
    generation: int
    """Increases with every swap (0 = nothing loaded yet)."""


EMPTY_SNAPSHOT = Snapshot(models={}, conflicts=(), generation=0)


def build_snapshot(bundles: Mapping[str, BundleMap], generation: int) -> Snapshot:
    """Consolidate per-bundle maps (failed bundles are simply absent) into one snapshot."""
    owners: dict[str, list[str]] = {}
    for bundle in sorted(bundles):
        for model in bundles[bundle].models:
            owners.setdefault(model, []).append(bundle)
    models: dict[str, ModelEntry] = {}
    conflicts: list[Conflict] = []
    for model in sorted(owners):
        winner, *shadowed = owners[model]
        if shadowed:
            conflicts.append(Conflict(model=model, winner=winner, shadowed=tuple(shadowed)))
        versions = bundles[winner].models[model]
        exact = {v.version: TrimDecision(v.features, v.version, "exact") for v in versions}
        newest = versions[-1]
        # Share the frozenset between the exact and latest decisions of the newest version.
        latest = TrimDecision(exact[newest.version].features, newest.version, "latest")
        latest_of = {v.version: TrimDecision(v.features, v.version, "latest") for v in versions}
        latest_of[newest.version] = latest
        models[model] = ModelEntry(
            bundle=winner,
            exact=exact,
            latest=latest,
            versions=tuple(v.version for v in versions),
            latest_of=latest_of,
            unserved={v.version: TrimDecision(frozenset(), v.version, "unserved") for v in versions},
        )
    return Snapshot(models=models, conflicts=tuple(conflicts), generation=generation)
