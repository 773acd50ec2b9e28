"""What a bundle build keeps besides the pending versions, and the signature report.

Retention (docs/hourly-rollouts.md): the package lists

- every pending version (the ones the build read from the model repository);
- the deployed versions some leaf serves, when the build knows what the fleet serves
  (``--served-from``): exactly what the rollout's gap check asks for;
- the newest ``keep_newest`` deployed versions of each model (``--keep-deployed K``; 2 when
  the fleet was not asked, so a build from a deployed file alone stays bounded too);

and drops every other deployed version, naming it in the manifest. A served version that
neither the repository nor the deployed bundle describes takes its signature from the
serving leaf's repository; one found nowhere is reported as skipped (the rollout's gap check
will then refuse the package). Pure functions on the caller's thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from contract.bundle_file import BundleError, ModelVersion
from contract.signature import SignatureError, read_signature
from contract.versions import sort_versions

__all__ = ["DEFAULT_KEEP_NEWEST", "Retained", "retain", "signature_changes"]

log = logging.getLogger("rootleaf.deploy.bundle")

DEFAULT_KEEP_NEWEST = 2
"""Deployed versions kept per model when the fleet's served versions are unknown."""

Entries = dict[str, dict[str, ModelVersion]]


@dataclass(frozen=True, slots=True)
class Retained:
    """What retention added to the pending entries, and what it left out."""

    kept: Mapping[str, tuple[str, ...]]
    """model -> deployed (or served) versions added to the pending ones."""
    dropped: Mapping[str, tuple[str, ...]]
    """model -> deployed versions left out."""
    skipped: tuple[str, ...]
    """Served versions without a signature anywhere (one line each)."""


def _leaf_signature(model: str, version: str, repos: Iterable[Path]) -> ModelVersion | None:
    for repo in repos:
        directory = repo / model / version
        if directory.is_dir():
            try:
                return ModelVersion.of(version, read_signature(directory))
            except (SignatureError, BundleError):
                continue
    return None


def retain(
    entries: Entries,
    deployed: Mapping[str, Sequence[ModelVersion]],
    served: Mapping[str, set[str]] | None,
    keep_newest: int | None,
    leaf_repos: Sequence[Path] = (),
) -> Retained:
    """Add the deployed versions to keep to ``entries`` (in place; the repository's signature
    wins over a deployed one of the same version) and say what was kept and dropped."""
    newest = keep_newest if keep_newest is not None else (None if served is not None else DEFAULT_KEEP_NEWEST)
    kept: dict[str, list[str]] = {}
    dropped: dict[str, list[str]] = {}
    skipped: list[str] = []
    # The bundle's models: the deployed bundle's and the pending ones (a leaf may also serve
    # models of other bundles; those are not this package's business).
    for model in sorted(set(deployed) | set(entries)):
        by_version = {e.version: e for e in deployed.get(model, ())}
        order = sort_versions(by_version)
        recent = set(order[-newest:]) if newest else set()
        wanted = recent | (served or {}).get(model, set())
        pending = entries.get(model, {})
        for version in sort_versions(wanted | set(order)):
            if version in pending:
                if version in by_version and by_version[version] != pending[version]:
                    log.warning("bundle build: %s version %s differs from the deployed signature; "
                                "the repository's signature wins", model, version)
                continue
            if version not in wanted:
                dropped.setdefault(model, []).append(version)
                continue
            entry = by_version.get(version) or _leaf_signature(model, version, leaf_repos)
            if entry is None:
                line = f"{model} version {version}: served, but no signature in the repository, the deployed bundle or a leaf repository"
                log.warning("bundle build: %s", line)
                skipped.append(line)
                continue
            entries.setdefault(model, {})[version] = entry
            kept.setdefault(model, []).append(version)
    return Retained(
        {m: tuple(v) for m, v in kept.items()}, {m: tuple(v) for m, v in dropped.items()}, tuple(skipped)
    )


def signature_changes(entries: Mapping[str, Mapping[str, ModelVersion]]) -> list[str]:
    """One line per model whose versions do not all share one signature (inputs and outputs),
    naming the versions of each signature in order of first appearance."""
    lines = []
    for model in sorted(entries):
        groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
        for version in sort_versions(entries[model]):
            entry = entries[model][version]
            groups.setdefault((entry.input_names, entry.output_names), []).append(version)
        if len(groups) > 1:
            parts = [
                f"v{','.join(versions)} inputs [{', '.join(inputs)}] outputs [{', '.join(outputs)}]"
                for (inputs, outputs), versions in groups.items()
            ]
            lines.append(f"{model}: {len(groups)} signatures: " + "; ".join(parts))
    return lines
