"""Fault injectors for the soak and the fault tests: allowlist reload storms on real files.

``AllowlistStorm`` rewrites a root's bundle-level ``module_info.json`` files. A valid
rewrite gives each model its signature inputs plus a random set of extra catalog features
(every version of a model gets the same list), written either atomically (temp file +
rename) or in place (truncate + write, so the root may read it half-written); a corrupt
rewrite is half of a valid document, bytes that are not UTF-8, or valid JSON with the wrong
schema. Every allowlist ever written validly is remembered per model, so a leaf-side
record can be checked against "an allowlist that was valid at some point". Owned by the
one thread that calls ``write``/``storm``/``restore``.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

CORRUPT_KINDS = ("half", "not_utf8", "schema")


@dataclass(slots=True)
class StormCounts:
    """What a storm wrote."""

    reloads: int = 0
    """Valid rewrites."""
    corrupt_reloads: int = 0
    """Corrupt or half-written rewrites."""
    by_kind: dict[str, int] = field(default_factory=dict)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.storm.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _in_place_write(path: Path, data: bytes) -> None:
    with open(path, "r+b" if path.exists() else "wb") as handle:
        handle.truncate(0)
        handle.write(data)


class AllowlistStorm:
    """Rewrites bundle files with valid and corrupt allowlists; see the module docstring."""

    def __init__(self, bundle_files: Mapping[str, Path], catalog_names: list[str], seed: int = 0) -> None:
        self.bundle_files = {name: Path(path) for name, path in bundle_files.items()}
        self.catalog_names = list(catalog_names)
        self._rng = random.Random(seed)
        self.originals: dict[str, bytes] = {name: p.read_bytes() for name, p in self.bundle_files.items()}
        self._docs: dict[str, dict[str, Any]] = {name: json.loads(data) for name, data in self.originals.items()}
        self.base: dict[str, frozenset[str]] = {}
        """Model -> the union of its versions' original input names (what it needs)."""
        for doc in self._docs.values():
            for model, versions in doc.items():
                self.base[model] = frozenset(n for v in versions for n in v["input_names"])
        self.valid: dict[str, set[frozenset[str]]] = {m: {names} for m, names in self.base.items()}
        """Model -> every allowlist that was valid at some point (the originals included)."""
        self.counts = StormCounts()

    def _valid_doc(self, bundle: str) -> bytes:
        doc: dict[str, Any] = {}
        for model, versions in self._docs[bundle].items():
            extra = self._rng.sample(self.catalog_names, self._rng.randint(0, min(8, len(self.catalog_names))))
            names = sorted(self.base[model] | set(extra))
            self.valid[model].add(frozenset(names))
            doc[model] = [{**v, "input_names": names} for v in versions]
        return json.dumps(doc, indent=1).encode()

    def _corrupt_doc(self, bundle: str, kind: str) -> bytes:
        if kind == "half":
            whole = json.dumps(self._docs[bundle], indent=1).encode()
            return whole[: len(whole) // 2]
        if kind == "not_utf8":
            return b'{"' + bytes([0xFF, 0xFE, 0x80]) + b'": []}'
        model = next(iter(self._docs[bundle]), "m")
        return json.dumps({model: [{"version": 1, "input_names": "not-a-list"}]}).encode()

    def write(self, bundle: str, corrupt: str | None = None) -> None:
        """One rewrite of ``bundle``: valid when ``corrupt`` is None, else of that kind."""
        path = self.bundle_files[bundle]
        if corrupt is None:
            data = self._valid_doc(bundle)
            (_atomic_write if self._rng.random() < 0.5 else _in_place_write)(path, data)
            self.counts.reloads += 1
            kind = "valid"
        else:
            if corrupt not in CORRUPT_KINDS:
                raise ValueError(f"corrupt kind must be one of {CORRUPT_KINDS}, got {corrupt!r}")
            _in_place_write(path, self._corrupt_doc(bundle, corrupt))
            self.counts.corrupt_reloads += 1
            kind = corrupt
        self.counts.by_kind[kind] = self.counts.by_kind.get(kind, 0) + 1

    def storm(
        self,
        rewrites: int,
        *,
        corrupt_fraction: float = 0.1,
        interval_s: float = 0.005,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """``rewrites`` rewrites over random bundles, ``corrupt_fraction`` of them corrupt,
        paced by ``interval_s``; always ends with a valid rewrite of every bundle, so the
        files are good when it returns."""
        corrupt_every = round(1 / corrupt_fraction) if corrupt_fraction > 0 else 0
        bundles = sorted(self.bundle_files)
        for i in range(rewrites):
            if should_stop():
                break
            bundle = self._rng.choice(bundles)
            corrupt = CORRUPT_KINDS[(i // max(corrupt_every, 1)) % len(CORRUPT_KINDS)] if (
                corrupt_every and i % corrupt_every == corrupt_every - 1
            ) else None
            self.write(bundle, corrupt)
            time.sleep(interval_s)  # pacing the injector so the watcher sees distinct versions
        for bundle in bundles:
            self.write(bundle)

    def restore(self) -> None:
        """Put the current documents (the originals plus any version added since) back."""
        for name, original in self.originals.items():
            same = json.loads(original) == self._docs[name]
            _atomic_write(self.bundle_files[name], original if same else json.dumps(self._docs[name], indent=1).encode())

    def add_version(self, bundle: str, model: str, version: str) -> None:
        """List ``version`` of ``model`` in ``bundle`` (a copy of its latest entry: a model's
        signature does not change across versions) and write the file atomically."""
        entries = self._docs[bundle][model]
        entries.append({**entries[-1], "version": version})
        _atomic_write(self.bundle_files[bundle], json.dumps(self._docs[bundle], indent=1).encode())

    def remove_version(self, bundle: str, model: str, version: str) -> None:
        """Stop listing ``version`` of ``model`` in ``bundle`` (atomic write)."""
        self._docs[bundle][model] = [e for e in self._docs[bundle][model] if e["version"] != version]
        _atomic_write(self.bundle_files[bundle], json.dumps(self._docs[bundle], indent=1).encode())

    def check_records(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Problems in leaf request records (``--record-requests`` lines): each request for a
        model with an allowlist must carry exactly the features of one valid allowlist."""
        problems = []
        for record in records:
            model = record["model"]
            if model not in self.valid:
                continue
            names = record["feature_names"]
            if len(set(names)) != len(names) or frozenset(names) not in self.valid[model]:
                problems.append(f"request {record['request_id']} to {model}: features {sorted(names)}")
        return problems


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a leaf wrote with ``--record-requests`` (a torn last line is skipped)."""
    out: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
