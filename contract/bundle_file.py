"""The bundle-level allowlist file: one set of rules to parse it and one way to write it.

A bundle file is the bundle build's output and the root trimmer's input::

    {"model_A": [{"version": "1", "input_names": ["f1"], "output_names": ["score"]}, ...], ...}

``parse_bundle`` turns its bytes into an immutable ``BundleMap`` or raises ``BundleError``
naming the first problem (duplicate keys or versions, bad names, unknown keys);
``render_bundle`` writes the canonical bytes (models sorted, versions oldest first, fixed
formatting), so identical content gives byte-identical files. Versions are ordered by
``contract.versions`` (the latest is last). Pure functions; safe from any thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from contract.names import name_problem
from contract.signature import Signature
from contract.versions import version_key

__all__ = ["BUNDLE_FILE", "BundleError", "BundleMap", "ModelVersion", "parse_bundle", "render_bundle"]

BUNDLE_FILE = "module_info.json"
_ENTRY_KEYS = frozenset({"version", "input_names", "output_names"})


class BundleError(ValueError):
    """A bundle file that cannot be used or built; ``reason`` says why (file, model, version, field)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One model version's signature as the bundle lists it."""

    version: str
    input_names: tuple[str, ...]
    """Features the version reads, in signature order (the allowlist)."""
    output_names: tuple[str, ...]
    features: frozenset[str] = field(init=False, repr=False, compare=False)
    """``input_names`` as a set, built once at parse time and shared by every snapshot."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", frozenset(self.input_names))

    @classmethod
    def of(cls, version: str, signature: Signature) -> "ModelVersion":
        """The bundle entry of ``version`` with ``signature``; a bad version name raises ``BundleError``."""
        problem = name_problem(version)
        if problem:
            raise BundleError(f"version {version!r} {problem}")
        return cls(version, signature.input_names, signature.output_names)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "input_names": list(self.input_names), "output_names": list(self.output_names)}


@dataclass(frozen=True, slots=True)
class BundleMap:
    """One bundle file's content: model -> versions, oldest first (latest last)."""

    models: Mapping[str, tuple[ModelVersion, ...]]

    @property
    def model_count(self) -> int:
        return len(self.models)

    @property
    def version_count(self) -> int:
        return sum(len(versions) for versions in self.models.values())


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BundleError(f"duplicate key {key!r} in a JSON object")
        out[key] = value
    return out


def _names(value: object, where: str, key: str, *, allow_empty: bool) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise BundleError(f"{where}: {key!r} must be a list of strings, got {type(value).__name__}")
    if not value and not allow_empty:
        raise BundleError(f"{where}: {key!r} must not be empty")
    # Fast path for the common, valid case (bundles hold thousands of names).
    if all(type(n) is str and n and not n.isspace() for n in value) and len(set(value)) == len(value):
        return tuple(value)
    seen: set[str] = set()
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name.strip():
            raise BundleError(f"{where}: {key}[{i}] must be a non-empty string, got {name!r}")
        if name in seen:
            raise BundleError(f"{where}: duplicate name {name!r} in {key!r}")
        seen.add(name)
    return tuple(value)


def _model_versions(model: str, entries: object) -> tuple[ModelVersion, ...]:
    if not isinstance(entries, list):
        raise BundleError(f"model {model!r}: must map to a list of versions, got {type(entries).__name__}")
    if not entries:
        raise BundleError(f"model {model!r}: has no versions")
    versions: dict[str, ModelVersion] = {}
    for i, entry in enumerate(entries):
        where = f"model {model!r} entry {i}"
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: must be an object, got {type(entry).__name__}")
        missing = sorted(_ENTRY_KEYS - entry.keys())
        if missing:
            raise BundleError(f"{where}: missing key(s) {missing}")
        unknown = sorted(entry.keys() - _ENTRY_KEYS)
        if unknown:
            raise BundleError(f"{where}: unknown key(s) {unknown}")
        version = entry["version"]
        problem = name_problem(version)
        if problem:
            raise BundleError(f"{where}: version {version!r} {problem}")
        where = f"model {model!r} version {version!r}"
        if version in versions:
            raise BundleError(f"{where}: duplicate version")
        versions[version] = ModelVersion(
            version=version,
            input_names=_names(entry["input_names"], where, "input_names", allow_empty=True),
            output_names=_names(entry["output_names"], where, "output_names", allow_empty=False),
        )
    return tuple(versions[v] for v in sorted(versions, key=version_key))


def parse_bundle(data: bytes) -> BundleMap:
    """Validate a bundle file's bytes; any problem raises ``BundleError`` with the reason."""
    if not data.strip():
        raise BundleError("empty file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"not UTF-8 text: {exc}") from None
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise BundleError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise BundleError("invalid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise BundleError(f"top level must be an object of model -> versions, got {type(doc).__name__}")
    models: dict[str, tuple[ModelVersion, ...]] = {}
    for model, entries in doc.items():
        problem = name_problem(model)
        if problem:
            raise BundleError(f"model name {model!r} {problem}")
        models[model] = _model_versions(model, entries)
    return BundleMap(models=models)


def render_bundle(models: Mapping[str, Mapping[str, ModelVersion]]) -> bytes:
    """Canonical bytes of a bundle file: models sorted, versions oldest first; models without
    versions are left out. ``parse_bundle(render_bundle(m))`` gives ``m`` back."""
    doc = {
        model: [models[model][v].to_json() for v in sorted(models[model], key=version_key)]
        for model in sorted(models)
        if models[model]
    }
    return (json.dumps(doc, indent=1, ensure_ascii=True) + "\n").encode()
