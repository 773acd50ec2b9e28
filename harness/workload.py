"""Workload files: a TOML description that fully determines demo data and models.

A workload names feature groups (``<prefix>_<i>`` for ``i`` in ``0..count-1``), the models
and which share of each group every model reads. Everything derived from it (catalog,
each model's inputs, weights seeds) is a pure function of the file and its ``seed``, so two
machines generate the same bytes. Parsing is strict: unknown keys and bad values raise
``WorkloadError`` naming the key. Pure code, no threads.

Feature selection: a model reads ``max(1, round(share * count))`` features of a group, the
first ones of a permutation seeded by ``(seed, partition, prefix)``. Models on one partition
(a production model and its variants) therefore share features, and a larger share is a
superset of a smaller one; models on different partitions pick independently.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from contract.dtypes import NUMPY_DTYPES
from root.catalog import KINDS, Entity, FeatureCatalog, FeatureSpec

# Bumped whenever generation changes meaning, so cached assets of older runs are rebuilt.
GENERATOR_VERSION = 2
MAX_FEATURES = 100_000
MAX_ENTITIES = 100_000_000


class WorkloadError(ValueError):
    """A workload file is unreadable or invalid; the message names the file and the key."""


def _fail(where: str, message: str) -> WorkloadError:
    return WorkloadError(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class WorkloadInfo:
    """The ``[workload]`` table."""

    name: str
    """Workload name (shows in reports and cluster.json)."""
    seed: int = 0
    """Seed of every random choice: data, feature selection, model weights."""
    candidates_per_request: int = 64
    """Candidates scored per request (N)."""
    users: int = 1000
    """Request entities in the feature store (ids 0..users-1)."""
    items: int = 10000
    """Candidate entities in the feature store (ids 0..items-1)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.replace("-", "_").isidentifier():
            raise WorkloadError(f"workload.name must be an identifier-like string, got {self.name!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise WorkloadError(f"workload.seed must be an int in [0, 2**32), got {self.seed!r}")
        for key in ("candidates_per_request", "users", "items"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ENTITIES:
                raise WorkloadError(f"workload.{key} must be a positive int, got {value!r}")
        if self.candidates_per_request > self.items:
            raise WorkloadError(
                f"workload.candidates_per_request ({self.candidates_per_request}) exceeds items ({self.items})"
            )


@dataclass(frozen=True, slots=True)
class FeatureGroup:
    """One ``[[features]]`` entry: ``count`` features named ``<prefix>_<i>``."""

    prefix: str
    """Name prefix; also the key models use in ``uses``."""
    entity: str
    """``request`` (one value per request) or ``candidate`` (one per item)."""
    count: int
    """How many features the group has."""
    dtype: str
    """Value dtype (one of ``contract.dtypes.NUMPY_DTYPES``)."""
    shape: tuple[int, ...] = ()
    """Per-entity shape: [] scalar, [64] embedding, [32] padded id list."""
    kind: str = "scalar"
    """Value distribution (one of ``root.catalog.KINDS``)."""
    zero_fraction: float = 0.0
    """Share of exact zeros (sparse features)."""
    default: float = 0.0
    """Value for ids the store does not know."""

    def __post_init__(self) -> None:
        where = f"features[{self.prefix!r}]"
        if not isinstance(self.prefix, str) or not self.prefix.isidentifier():
            raise WorkloadError(f"features.prefix must be an identifier, got {self.prefix!r}")
        if self.entity not in (e.value for e in Entity):
            raise WorkloadError(f"{where}.entity must be 'request' or 'candidate', got {self.entity!r}")
        if not isinstance(self.count, int) or isinstance(self.count, bool) or not 1 <= self.count <= MAX_FEATURES:
            raise WorkloadError(f"{where}.count must be a positive int, got {self.count!r}")
        if self.dtype not in NUMPY_DTYPES:
            raise WorkloadError(f"{where}.dtype must be one of {NUMPY_DTYPES}, got {self.dtype!r}")
        if not isinstance(self.shape, (tuple, list)) or any(
            not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in self.shape
        ):
            raise WorkloadError(f"{where}.shape must be a list of positive ints, got {self.shape!r}")
        object.__setattr__(self, "shape", tuple(self.shape))
        if self.kind not in KINDS:
            raise WorkloadError(f"{where}.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind in ("embedding", "ids") and not self.shape:
            raise WorkloadError(f"{where}.shape must not be empty for kind {self.kind!r}")
        if self.kind == "ids" and not self.dtype.startswith("int"):
            raise WorkloadError(f"{where}.dtype must be an int type for kind 'ids', got {self.dtype!r}")
        if not isinstance(self.zero_fraction, (int, float)) or isinstance(self.zero_fraction, bool) or not (
            0.0 <= float(self.zero_fraction) <= 1.0
        ):
            raise WorkloadError(f"{where}.zero_fraction must be in [0, 1], got {self.zero_fraction!r}")
        object.__setattr__(self, "zero_fraction", float(self.zero_fraction))
        if not isinstance(self.default, (int, float)) or isinstance(self.default, bool) or not math.isfinite(
            self.default
        ):
            raise WorkloadError(f"{where}.default must be a finite number, got {self.default!r}")
        object.__setattr__(self, "default", float(self.default))

    @property
    def names(self) -> list[str]:
        return [f"{self.prefix}_{i}" for i in range(self.count)]

    @property
    def width(self) -> int:
        """Flattened values per entity."""
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One ``[[models]]`` entry."""

    name: str
    """Model name (unique in the workload)."""
    partition: str
    """Leaf partition that hosts it; also its bundle name."""
    versions: tuple[str, ...]
    """Versions generated (same signature, different weights); the last is the latest."""
    uses: Mapping[str, float]
    """Feature group prefix -> share of the group the model reads, in (0, 1]."""
    hidden: tuple[int, ...] = (64,)
    """MLP hidden layer sizes."""
    outputs: tuple[str, ...] = ("score",)
    """Output names."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise WorkloadError(f"models.name must be an identifier, got {self.name!r}")
        where = f"models[{self.name!r}]"
        if not isinstance(self.partition, str) or not self.partition.isidentifier():
            raise WorkloadError(f"{where}.partition must be an identifier, got {self.partition!r}")
        for key in ("versions", "outputs"):
            value = getattr(self, key)
            if (
                not isinstance(value, (tuple, list))
                or not value
                or any(not isinstance(v, str) or not v or "/" in v or v.startswith(".") for v in value)
                or len(set(value)) != len(value)
            ):
                raise WorkloadError(f"{where}.{key} must be a non-empty list of unique names, got {value!r}")
            object.__setattr__(self, key, tuple(value))
        if not isinstance(self.hidden, (tuple, list)) or any(
            not isinstance(h, int) or isinstance(h, bool) or h <= 0 for h in self.hidden
        ):
            raise WorkloadError(f"{where}.hidden must be a list of positive ints, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not isinstance(self.uses, Mapping) or not self.uses:
            raise WorkloadError(f"{where}.uses must be a non-empty table of group -> share")
        for prefix, share in self.uses.items():
            if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0.0 < share <= 1.0:
                raise WorkloadError(f"{where}.uses.{prefix} must be a share in (0, 1], got {share!r}")
        object.__setattr__(self, "uses", {k: float(v) for k, v in self.uses.items()})


@dataclass(frozen=True, slots=True)
class Workload:
    """A parsed workload file."""

    info: WorkloadInfo
    features: tuple[FeatureGroup, ...]
    models: tuple[ModelSpec, ...]
    groups: Mapping[str, FeatureGroup] = field(init=False)

    def __post_init__(self) -> None:
        if not self.features:
            raise WorkloadError("workload needs at least one [[features]] group")
        if not self.models:
            raise WorkloadError("workload needs at least one [[models]] entry")
        groups: dict[str, FeatureGroup] = {}
        for group in self.features:
            if group.prefix in groups:
                raise WorkloadError(f"features: duplicate prefix {group.prefix!r}")
            groups[group.prefix] = group
        object.__setattr__(self, "groups", groups)
        try:
            self.catalog()
        except ValueError as exc:
            raise WorkloadError(f"features: {exc}") from None
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise WorkloadError(f"models: duplicate name {model.name!r}")
            seen.add(model.name)
            for prefix in model.uses:
                if prefix not in groups:
                    raise WorkloadError(f"models[{model.name!r}].uses names unknown feature group {prefix!r}")

    @property
    def name(self) -> str:
        return self.info.name

    def catalog(self) -> FeatureCatalog:
        """Every feature of every group, in file order."""
        return FeatureCatalog.of(
            FeatureSpec(
                name=name,
                entity=Entity(g.entity),
                dtype=g.dtype,
                shape=g.shape,
                default=g.default,
                kind=g.kind,
                zero_fraction=g.zero_fraction,
            )
            for g in self.features
            for name in g.names
        )

    def model(self, name: str) -> ModelSpec:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    def model_inputs(self, name: str) -> list[str]:
        """The features model ``name`` reads, in group (file) order then index order."""
        model = self.model(name)
        names: list[str] = []
        for group in self.features:
            share = model.uses.get(group.prefix)
            if share is None:
                continue
            k = max(1, min(group.count, round(share * group.count)))
            rng = np.random.default_rng(
                [self.info.seed, zlib.crc32(model.partition.encode()), zlib.crc32(group.prefix.encode())]
            )
            chosen = np.sort(rng.permutation(group.count)[:k])
            names.extend(f"{group.prefix}_{i}" for i in chosen.tolist())
        return names

    def input_widths(self, name: str) -> dict[str, int]:
        """Model ``name``'s inputs -> flattened width per row (what the demo model needs)."""
        widths: dict[str, int] = {}
        for feature in self.model_inputs(name):
            prefix = feature.rsplit("_", 1)[0]
            widths[feature] = self.groups[prefix].width
        return widths

    def model_seed(self, name: str, version: str) -> int:
        """Weights seed of one model version."""
        digest = hashlib.sha256(f"{self.info.seed}/{name}/{version}".encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def partitions(self) -> dict[str, list[str]]:
        """Partition -> its models, in file order."""
        out: dict[str, list[str]] = {}
        for model in self.models:
            out.setdefault(model.partition, []).append(model.name)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": asdict(self.info),
            "features": [{**asdict(g), "shape": list(g.shape)} for g in self.features],
            "models": [
                {**asdict(m), "versions": list(m.versions), "hidden": list(m.hidden), "outputs": list(m.outputs),
                 "uses": dict(m.uses)}
                for m in self.models
            ],
        }

    def content_hash(self) -> str:
        """sha256 of the parsed workload and the generator version (comments do not count)."""
        doc = {"generator": GENERATOR_VERSION, **self.to_json()}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


_INFO_KEYS = {"name", "seed", "candidates_per_request", "users", "items"}
_GROUP_KEYS = {"prefix", "entity", "count", "dtype", "shape", "kind", "zero_fraction", "default"}
_MODEL_KEYS = {"name", "partition", "versions", "uses", "hidden", "outputs"}
_TOP_KEYS = {"workload", "features", "models"}
_REQUIRED_GROUP = {"prefix", "entity", "count", "dtype"}
_REQUIRED_MODEL = {"name", "partition", "versions", "uses"}


def _table(doc: Any, where: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise WorkloadError(f"{where} must be a table")
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise WorkloadError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(doc))
    if missing:
        raise WorkloadError(f"{where}: missing key {missing[0]!r}")
    return doc


def parse_workload(doc: Mapping[str, Any], source: str = "<workload>") -> Workload:
    """Validate a decoded TOML document into a ``Workload``."""
    try:
        top = _table(dict(doc), "top level", _TOP_KEYS, _TOP_KEYS)
        info = WorkloadInfo(**_table(top["workload"], "[workload]", _INFO_KEYS, {"name"}))
        if not isinstance(top["features"], list):
            raise WorkloadError("features must be an array of tables ([[features]])")
        if not isinstance(top["models"], list):
            raise WorkloadError("models must be an array of tables ([[models]])")
        groups = []
        for i, item in enumerate(top["features"]):
            groups.append(FeatureGroup(**_table(item, f"features[{i}]", _GROUP_KEYS, _REQUIRED_GROUP)))
        models = []
        for i, item in enumerate(top["models"]):
            models.append(ModelSpec(**_table(item, f"models[{i}]", _MODEL_KEYS, _REQUIRED_MODEL)))
        return Workload(info, tuple(groups), tuple(models))
    except WorkloadError as exc:
        raise _fail(source, str(exc)) from None
    except TypeError as exc:  # a value of the wrong type reached a dataclass
        raise _fail(source, str(exc)) from None


def load_workload(path: str | Path) -> Workload:
    """Read and validate a workload TOML file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"{path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise WorkloadError(f"{path}: not valid TOML ({exc})") from None
    return parse_workload(doc, str(path))


def builtin_workload(name: str) -> Path:
    """Path of a workload shipped in ``workloads/`` (``w1``, ``ci``), or ``name`` itself if it is a file."""
    candidate = Path(name)
    if candidate.suffix == ".toml" or candidate.exists():
        return candidate
    shipped = Path(__file__).resolve().parents[1] / "workloads" / f"{name}.toml"
    if not shipped.is_file():
        raise WorkloadError(f"no workload file {name!r} and no shipped workload {shipped}")
    return shipped
