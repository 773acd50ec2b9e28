"""Bundle-level allowlist files: strict parsing, validation and version ordering.

A bundle file is the bundle build's output::

    {"model_A": [{"version": "1", "input_names": ["f1"], "output_names": ["score"]}, ...], ...}

``parse_bundle`` turns its bytes into an immutable ``BundleMap`` or raises ``BundleError``
naming the first problem. Pure functions; no state, safe from any thread.

Version order ("latest" = the greatest): versions compare in *natural order*. A version is
split into runs of digits and runs of other characters; digit runs compare as integers,
other runs as strings, and a digit run sorts before a text run at the same position. So
integer versions compare numerically ("10" > "9"), "1.10" > "1.9", "2.0" > "2", and
"v2" > "v10" is false. Ties (e.g. "01" vs "1") fall back to plain string order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "BundleError",
    "BundleMap",
    "ModelVersion",
    "parse_bundle",
    "version_sort_key",
]

_RUNS = re.compile(r"\d+|\D+")
_ENTRY_KEYS = frozenset({"version", "input_names", "output_names"})

VersionKey = tuple[tuple[tuple[int, int, str], ...], str]


class BundleError(ValueError):
    """A bundle file that cannot be used; ``reason`` says why (file, model, version, field)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def version_sort_key(version: str) -> VersionKey:
    """Natural-order key: digit runs numerically, text runs as strings (module docstring)."""
    parts = tuple(
        (0, int(run), "") if run.isdigit() else (1, 0, run) for run in _RUNS.findall(version)
    )
    return parts, version


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


def _names(value: object, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise BundleError(f"{where}: {key!r} must be a list of strings, got {type(value).__name__}")
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
        if not isinstance(version, str) or not version.strip():
            raise BundleError(f"{where}: 'version' must be a non-empty string, got {version!r}")
        where = f"model {model!r} version {version!r}"
        if version in versions:
            raise BundleError(f"{where}: duplicate version")
        versions[version] = ModelVersion(
            version=version,
            input_names=_names(entry["input_names"], where, "input_names"),
            output_names=_names(entry["output_names"], where, "output_names"),
        )
    return tuple(versions[v] for v in sorted(versions, key=version_sort_key))


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
        if not model.strip():
            raise BundleError(f"model name must be a non-empty string, got {model!r}")
        models[model] = _model_versions(model, entries)
    return BundleMap(models=models)
