"""Bundle build: aggregate model-version signatures into one bundle-level ``module_info.json``.

Reads ``<repo>/<model>/<version>/module_info.json`` (else the copy inside ``model.pt``, a zip
whose ``*/extra/module_info.json`` member carries it) without importing torch. A version with
a missing or unreadable signature is logged as a WARNING naming it and skipped; a bundle with
no signature at all is an error. Output is canonical (sorted models, versions in numeric
order, fixed JSON formatting), so identical inputs give byte-identical files. Pure functions
on the caller's thread; no shared state.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from deploy.package import PackageInfo, write_package
from protos.signature import Signature, SignatureError, read_signature

log = logging.getLogger("rootleaf.deploy.bundle")

BUNDLE_FILE = "module_info.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class BundleError(ValueError):
    """The bundle cannot be built (no signatures, bad name, unreadable deployed file)."""


class SignatureUnreadable(ValueError):
    """One version's signature is missing or malformed (the build skips that version)."""


@dataclass(frozen=True, slots=True)
class VersionEntry:
    """One model version's signature as it appears in the bundle file."""

    version: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not _NAME_RE.match(self.version):
            raise SignatureUnreadable(f"version {self.version!r} is not a valid version name")
        if any(not isinstance(n, str) or not n for n in self.input_names):
            raise SignatureUnreadable("input_names must be non-empty strings")
        if not self.output_names or any(not isinstance(n, str) or not n for n in self.output_names):
            raise SignatureUnreadable("output_names must be a non-empty list of non-empty strings")

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
        }


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


def version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions ascend numerically and sort before non-numeric ones."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def _entry(signature: Signature, version: str, source: str) -> VersionEntry:
    try:
        return VersionEntry(version, signature.input_names, signature.output_names)
    except SignatureUnreadable as exc:
        raise SignatureUnreadable(f"{source}: {exc}") from None


def read_version_signature(version_dir: Path) -> VersionEntry:
    """The signature of one version directory; raises ``SignatureUnreadable``."""
    try:
        signature = read_signature(version_dir)
    except SignatureError as exc:
        raise SignatureUnreadable(str(exc)) from None
    return _entry(signature, version_dir.name, str(version_dir))


def _visible_dirs(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]


def scan_repository(
    repo: Path, models: Sequence[str] | None = None
) -> tuple[dict[str, dict[str, VersionEntry]], list[str]]:
    """Signatures of every version in ``repo`` (or of ``models`` only) and the skip lines."""
    if not repo.is_dir():
        raise BundleError(f"model repository {repo} is not a directory")
    wanted = sorted(set(models)) if models else sorted(p.name for p in _visible_dirs(repo))
    found: dict[str, dict[str, VersionEntry]] = {}
    skipped: list[str] = []
    for model in wanted:
        model_dir = repo / model
        if not model_dir.is_dir():
            raise BundleError(f"model {model!r} has no directory in {repo}")
        for version_dir in sorted(_visible_dirs(model_dir), key=lambda p: version_key(p.name)):
            try:
                entry = read_version_signature(version_dir)
            except SignatureUnreadable as exc:
                line = f"{model} version {version_dir.name}: skipped, {exc}"
                log.warning("bundle build: %s", line)
                skipped.append(line)
                continue
            found.setdefault(model, {})[entry.version] = entry
    return found, skipped


def parse_bundle_document(raw: bytes, source: str) -> dict[str, dict[str, VersionEntry]]:
    """Parse a bundle-level file (the format this module writes)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{source}: expected an object mapping model -> versions")
    out: dict[str, dict[str, VersionEntry]] = {}
    for model, versions in doc.items():
        if not isinstance(versions, list):
            raise BundleError(f"{source}: {model!r} must map to a list of versions")
        for item in versions:
            if not isinstance(item, dict) or not isinstance(item.get("version"), str):
                raise BundleError(f"{source}: {model!r} has an entry without a string 'version'")
            try:
                entry = _entry(Signature.from_doc(item, f"{source}:{model}"), item["version"], f"{source}:{model}")
            except (SignatureError, SignatureUnreadable) as exc:
                raise BundleError(str(exc)) from None
            out.setdefault(model, {})[entry.version] = entry
    return out


def render_bundle(entries: Mapping[str, Mapping[str, VersionEntry]]) -> bytes:
    """Canonical bytes of a bundle-level file: models sorted, versions ascending."""
    doc = {
        model: [entries[model][v].to_json() for v in sorted(entries[model], key=version_key)]
        for model in sorted(entries)
        if entries[model]
    }
    return (json.dumps(doc, indent=1, sort_keys=False, ensure_ascii=True) + "\n").encode()


def merge_deployed(
    pending: dict[str, dict[str, VersionEntry]], deployed: Mapping[str, Mapping[str, VersionEntry]]
) -> None:
    """Add deployed versions missing from ``pending`` (in place): no rollout gap."""
    for model, versions in deployed.items():
        for version, entry in versions.items():
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
    if not _NAME_RE.match(name):
        raise BundleError(f"bundle name {name!r} must match {_NAME_RE.pattern}")
    entries, skipped = scan_repository(Path(repo), models)
    if include_deployed is not None:
        deployed_path = Path(include_deployed)
        try:
            raw = deployed_path.read_bytes()
        except OSError as exc:
            raise BundleError(f"--include-deployed {deployed_path}: cannot read ({exc})") from None
        merge_deployed(entries, parse_bundle_document(raw, str(deployed_path)))
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
    shipped = {m: tuple(sorted(v, key=version_key)) for m, v in sorted(entries.items()) if v}
    package = write_package(out_dir, name, bundle_bytes, shipped, configs)
    return BuildResult(name, bundle_file, package, shipped, tuple(skipped))
