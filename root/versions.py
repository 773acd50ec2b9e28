"""Which version of each requested model runs: resolved by the root among the versions its
partition's leaves have loaded, so the leaf always runs the version whose allowlist was
applied (docs/versions-and-trimming.md, "Model versions"). Owned by the root's event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Container, Mapping, Protocol, Sequence

import grpc

from contract.versions import latest_version, version_key
from root import metrics
from root.leaf_client import LeafClient
from root.request import ModelOutcome, ModelRef

__all__ = ["Allowlists", "Decision", "Route", "VersionResolver", "pending_versions"]


class Decision(Protocol):
    """What the trimmer says about one model (``trimmer.TrimDecision`` fits)."""

    @property
    def features(self) -> frozenset[str] | None: ...

    @property
    def version(self) -> str | None: ...

    @property
    def kind(self) -> str: ...


class Allowlists(Protocol):
    """Per-model allowlists (``trimmer.FeatureTrimmer`` fits)."""

    def lookup(
        self, model: str, version: str | None = None, servable: Container[str] | None = None
    ) -> Decision: ...


# Longest wait for a partition's loaded versions before routing on what is known.
VERSIONS_REFRESH_TIMEOUT_S = 0.5


@dataclass(frozen=True, slots=True)
class Route:
    """One model of a request, resolved: the version to run and the features it gets."""

    ref: ModelRef
    partition: str
    version: str
    """The version named to the leaf ("" only when the partition's versions are unknown and
    the model is untrimmed: the leaf then runs its latest)."""
    features: frozenset[str] | None
    """The allowlist of ``version``; None = untrimmed."""
    kind: str
    """How the version was chosen: exact | latest | untrimmed."""
    label: str
    """``version`` as a metric label: itself when a bundle or a leaf named it,
    ``metrics.UNKNOWN_VERSION`` when only the client did (label values never come from
    request text)."""


class VersionResolver:
    """Resolves models to versions and allowlists with the trimmer and the partitions' views."""

    def __init__(
        self, allowlists: Allowlists, leaves: Mapping[str, LeafClient], partition_of: Mapping[str, str], *, trim: bool
    ) -> None:
        self._allowlists = allowlists
        self._leaves = leaves
        self._partition_of = partition_of
        self._trim = trim

    def resolve(self, ref: ModelRef) -> Route | ModelOutcome:
        """The version ``ref`` runs on and its allowlist, among the versions its partition
        serves; an error outcome when the version asked for is known but served nowhere.

        The rules (docs/versions-and-trimming.md, "Model versions"), in order:

        1. a version the client names and a leaf of the partition serves runs as asked: with
           its allowlist when the bundle lists it (``exact``), untrimmed otherwise (the
           reference design's "skip trimming" rather than another version's allowlist);
        2. a version the bundle lists but no leaf serves fails the model (FAILED_PRECONDITION);
        3. an omitted version, or one neither served nor listed, runs the newest listed version
           a leaf serves (``latest``);
        4. no allowlist at all (no bundle lists the model, trimming is off for it, or no listed
           version is served): untrimmed, on the version asked for if served, else the newest
           served.
        """
        partition = self._partition_of[ref.name]
        served = self._leaves[partition].served_versions(ref.name)
        pinned = ref.version is not None and served is not None and ref.version in served
        if self._trim:
            decision = self._allowlists.lookup(ref.name, ref.version, servable=served)
            if decision.kind == "unserved" and decision.version is not None:
                metrics.child(metrics.MODEL_REQUESTS, ref.name, decision.version, "unserved").inc()
                return ModelOutcome(
                    ref.name, decision.version, (), grpc.StatusCode.FAILED_PRECONDITION,
                    f"model {ref.name!r}: no leaf of partition {partition!r} serves version {decision.version!r} "
                    f"(served: {sorted(served or (), key=version_key)})",
                )
            if decision.version is not None and (decision.kind == "exact" or not pinned):
                metrics.child(metrics.MODEL_REQUESTS, ref.name, decision.version, decision.kind).inc()
                return Route(ref, partition, decision.version, decision.features, decision.kind, decision.version)
            # Rule 1 without an allowlist for the pinned version, or rule 4.
        # Untrimmed: every feature goes, so any loaded version can run it.
        if served is None:
            # The client's text goes to the leaf (which refuses a version it lacks) but never
            # into a label: until the partition reports its versions, the series is "unknown".
            version = ref.version or ""
            metrics.child(metrics.MODEL_REQUESTS, ref.name, metrics.UNKNOWN_VERSION, "untrimmed").inc()
            return Route(ref, partition, version, None, "untrimmed", metrics.UNKNOWN_VERSION)
        if pinned:
            version = ref.version or ""
        else:
            version = latest_version(served) or ""
            if not version:
                return ModelOutcome(
                    ref.name, "", (), grpc.StatusCode.UNAVAILABLE,
                    f"model {ref.name!r}: no leaf of partition {partition!r} has a version loaded",
                )
        metrics.child(metrics.MODEL_REQUESTS, ref.name, version, "untrimmed").inc()
        return Route(ref, partition, version, None, "untrimmed", version)

    async def refresh(self, partitions: set[str], deadline: float) -> None:
        """Refresh these partitions' loaded versions, within half the time left (at most
        ``VERSIONS_REFRESH_TIMEOUT_S``)."""
        loop = asyncio.get_running_loop()
        timeout = min(VERSIONS_REFRESH_TIMEOUT_S, max(deadline - loop.time(), 0.0) / 2)
        if timeout > 0:
            await asyncio.gather(*(self._leaves[p].refresh_versions(timeout) for p in partitions))


def pending_versions(listed: Sequence[str], served: Container[str], newest_served: str | None) -> list[str]:
    """The versions a bundle lists that no leaf serves yet: newer than every served one
    (``rootleaf_root_unserved_versions``). Older listed versions the leaves have unloaded
    are retired, not pending: they fall out of the bundle at its next build (retention)."""
    floor = None if newest_served is None else version_key(newest_served)
    return [v for v in listed if v not in served and (floor is None or version_key(v) > floor)]
