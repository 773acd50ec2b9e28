"""Bundle build: aggregate model-version signatures into one bundle-level ``module_info.json``.

Reads ``<repo>/<model>/<version>/module_info.json`` (else the copy inside ``model.pt``, a zip
whose ``*/extra/module_info.json`` member carries it) without importing torch. A version with
a missing or unreadable signature (or a name the contract refuses) is logged as a WARNING
naming it and skipped; a bundle with no signature at all is an error. The file format,
its parsing rules and the version order are the contract's (``contract.bundle_file``,
``contract.versions``), the same ones every root applies, and the build parses its own
output with that parser before writing anything. Which deployed versions the package keeps is
``deploy.retention``'s rule. Functions on the caller's thread (``--served-from`` runs its
``Leaf/ListModels`` calls on a private event loop); no shared state.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from contract.bundle_file import BUNDLE_FILE, BundleError, ModelVersion, parse_bundle, render_bundle
from contract.names import bundle_name_problem, name_problem
from contract.signature import SignatureError, read_signature
from contract.versions import sort_versions
from deploy.fleet import FleetError, load_fleet, read_deployed, served_by_model, served_versions
from deploy.package import PackageInfo, write_package
from deploy.retention import retain, signature_changes

log = logging.getLogger("rootleaf.deploy.bundle")

__all__ = ["BuildResult", "FleetView", "build_bundle", "read_fleet", "read_version_signature", "scan_repository"]

Entries = dict[str, dict[str, ModelVersion]]
"""model -> version -> entry, as the build collects them."""


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What a bundle build produced."""

    name: str
    bundle_file: Path
    package: PackageInfo
    models: Mapping[str, tuple[str, ...]]
    """model -> versions shipped (ascending)."""
    skipped: tuple[str, ...] = field(default=())
    """One line per skipped version, naming it and why."""
    dropped: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """model -> deployed versions retention left out (also in the manifest)."""
    signature_changes: tuple[str, ...] = field(default=())
    """One line per model whose versions' signatures differ."""


def read_version_signature(version_dir: Path) -> ModelVersion:
    """The bundle entry of one version directory; ``SignatureError`` or ``BundleError`` when unusable."""
    return ModelVersion.of(version_dir.name, read_signature(version_dir))


def _visible_dirs(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]


def scan_repository(repo: Path, models: Sequence[str] | None = None) -> tuple[Entries, list[str]]:
    """Signatures of every version in ``repo`` (or of ``models`` only) and the skip lines."""
    if not repo.is_dir():
        raise BundleError(f"model repository {repo} is not a directory")
    wanted = sorted(set(models)) if models else sorted(p.name for p in _visible_dirs(repo))
    found: Entries = {}
    skipped: list[str] = []
    for model in wanted:
        model_dir = repo / model
        if not model_dir.is_dir():
            raise BundleError(f"model {model!r} has no directory in {repo}")
        problem = name_problem(model)
        if problem:
            raise BundleError(f"model {model!r} {problem}")
        versions = {p.name: p for p in _visible_dirs(model_dir)}
        for version in sort_versions(versions):
            version_dir = versions[version]
            try:
                entry = read_version_signature(version_dir)
            except (SignatureError, BundleError) as exc:
                line = f"{model} version {version_dir.name}: skipped, {exc}"
                log.warning("bundle build: %s", line)
                skipped.append(line)
                continue
            found.setdefault(model, {})[entry.version] = entry
    return found, skipped


def _read_deployed_file(path: Path) -> Mapping[str, Sequence[ModelVersion]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"--include-deployed {path}: cannot read ({exc})") from None
    try:
        return parse_bundle(raw).models
    except BundleError as exc:
        raise BundleError(f"--include-deployed {path}: {exc.reason}") from None


@dataclass(frozen=True, slots=True)
class FleetView:
    """What the fleet serves now, for retention: model -> versions some leaf lists."""

    served: Mapping[str, set[str]]
    deployed: Mapping[str, Sequence[ModelVersion]]
    """The bundle a root of the fleet loads now (empty when none is readable)."""
    leaf_repos: tuple[Path, ...] = ()


def read_fleet(source: str | Path, name: str, timeout_s: float = 5.0) -> FleetView:
    """Ask every leaf of a cluster file's or plan's fleet what it serves (``--served-from``)."""
    try:
        fleet = load_fleet(source, name)
        served = asyncio.run(served_versions(fleet.leaves, fleet.tls, timeout_s))
    except FleetError as exc:
        raise BundleError(f"--served-from {source}: {exc}") from None
    deployed = read_deployed(fleet.bundle_files)
    return FleetView(served_by_model(served), deployed.models if deployed is not None else {},
                     tuple(leaf.repo_dir for leaf in fleet.leaves))


def build_bundle(
    name: str,
    repo: str | Path,
    out: str | Path,
    *,
    models: Sequence[str] | None = None,
    include_deployed: str | Path | None = None,
    served_from: str | Path | FleetView | None = None,
    keep_deployed: int | None = None,
    strict_signatures: bool = False,
    extra_configs: Iterable[str | Path] = (),
) -> BuildResult:
    """Build ``<out>/module_info.json`` and the root-config package for bundle ``name``.

    Pending versions come from ``repo``; deployed ones from ``include_deployed`` (a bundle
    file) and/or ``served_from`` (a cluster file or plan: the versions its leaves serve and
    the bundle its roots load), kept by ``deploy.retention``'s rules."""
    problem = bundle_name_problem(name)
    if problem:
        raise BundleError(f"bundle name {name!r} {problem}")
    if keep_deployed is not None and (isinstance(keep_deployed, bool) or not isinstance(keep_deployed, int) or keep_deployed < 0):
        raise BundleError(f"--keep-deployed must be an integer >= 0, got {keep_deployed!r}")
    entries, skipped = scan_repository(Path(repo), models)
    fleet = read_fleet(served_from, name) if isinstance(served_from, (str, Path)) else served_from
    deployed: dict[str, Sequence[ModelVersion]] = dict(fleet.deployed) if fleet is not None else {}
    if include_deployed is not None:
        deployed.update(_read_deployed_file(Path(include_deployed)))
    retained = None
    if deployed or fleet is not None:
        retained = retain(entries, deployed, fleet.served if fleet is not None else None, keep_deployed,
                          fleet.leaf_repos if fleet is not None else ())
        skipped += retained.skipped
    if not any(entries.values()):
        raise BundleError(
            f"bundle {name!r}: no model version in {repo} has a readable signature"
            + (f" ({len(skipped)} skipped)" if skipped else "")
        )
    changes = signature_changes(entries)
    for line in changes:
        log.warning("bundle build: signature differs between versions: %s", line)
    if strict_signatures and changes:
        raise BundleError("--strict-signatures: signatures differ between versions of a model: " + " | ".join(changes))
    bundle_bytes = render_bundle(entries)
    try:
        parse_bundle(bundle_bytes)  # the roots' parser: what it refuses fails here, not in a rollout
    except BundleError as exc:
        raise BundleError(f"bundle {name!r}: the roots would refuse the bundle file built: {exc.reason}") from None
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_file = out_dir / BUNDLE_FILE
    tmp = out_dir / f".{BUNDLE_FILE}.tmp"
    tmp.write_bytes(bundle_bytes)
    tmp.replace(bundle_file)
    configs: dict[str, bytes] = {}
    for path in map(Path, extra_configs):
        if path.name in configs or path.name == BUNDLE_FILE:
            raise BundleError(f"extra root config {path}: duplicate file name {path.name!r}")
        try:
            configs[path.name] = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"extra root config {path}: cannot read ({exc})") from None
    shipped = {m: tuple(sort_versions(v)) for m, v in sorted(entries.items()) if v}
    dropped = dict(retained.dropped) if retained is not None else {}
    package = write_package(out_dir, name, bundle_bytes, shipped, configs, dropped=dropped)
    return BuildResult(name, bundle_file, package, shipped, tuple(skipped), dropped, tuple(changes))
