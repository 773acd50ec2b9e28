"""Bundle build: aggregate model-version signatures into one bundle-level ``module_info.json``.

Reads ``<repo>/<model>/<version>/module_info.json`` (else the copy inside ``model.pt``, a zip
whose ``*/extra/module_info.json`` member carries it) without importing torch. A version with
a missing or unreadable signature (or a name the contract refuses) is logged as a WARNING
naming it and skipped; a bundle with no signature at all is an error. The file format,
its parsing rules and the version order are the contract's (``contract.bundle_file``,
``contract.versions``), the same ones every root applies. Pure functions on the caller's
thread; no shared state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from contract.bundle_file import BUNDLE_FILE, BundleError, ModelVersion, parse_bundle, render_bundle
from contract.names import bundle_name_problem, name_problem
from contract.signature import SignatureError, read_signature
from contract.versions import sort_versions
from deploy.package import PackageInfo, write_package

log = logging.getLogger("rootleaf.deploy.bundle")

__all__ = ["BuildResult", "build_bundle", "merge_deployed", "read_version_signature", "scan_repository"]

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


def merge_deployed(pending: Entries, deployed: Mapping[str, Sequence[ModelVersion]]) -> None:
    """Add deployed versions missing from ``pending`` (in place): no rollout gap."""
    for model, versions in deployed.items():
        for entry in versions:
            version = entry.version
            current = pending.setdefault(model, {}).get(version)
            if current is None:
                pending[model][version] = entry
            elif current != entry:
                log.warning(
                    "bundle build: %s version %s differs from the deployed signature; "
                    "the repository's signature wins", model, version,
                )


def build_bundle(
    name: str,
    repo: str | Path,
    out: str | Path,
    *,
    models: Sequence[str] | None = None,
    include_deployed: str | Path | None = None,
    extra_configs: Iterable[str | Path] = (),
) -> BuildResult:
    """Build ``<out>/module_info.json`` and the root-config package for bundle ``name``."""
    problem = bundle_name_problem(name)
    if problem:
        raise BundleError(f"bundle name {name!r} {problem}")
    entries, skipped = scan_repository(Path(repo), models)
    if include_deployed is not None:
        deployed_path = Path(include_deployed)
        try:
            raw = deployed_path.read_bytes()
        except OSError as exc:
            raise BundleError(f"--include-deployed {deployed_path}: cannot read ({exc})") from None
        try:
            deployed = parse_bundle(raw)
        except BundleError as exc:
            raise BundleError(f"--include-deployed {deployed_path}: {exc.reason}") from None
        merge_deployed(entries, deployed.models)
    if not any(entries.values()):
        raise BundleError(
            f"bundle {name!r}: no model version in {repo} has a readable signature"
            + (f" ({len(skipped)} skipped)" if skipped else "")
        )
    bundle_bytes = render_bundle(entries)
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
    package = write_package(out_dir, name, bundle_bytes, shipped, configs)
    return BuildResult(name, bundle_file, package, shipped, tuple(skipped))
