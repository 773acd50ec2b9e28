"""Feature catalog: what each feature is (entity, dtype, per-entity shape, default).

The catalog is a JSON file (``{"features": [{...}, ...]}``) written by the workload
generator or by hand; the root loads it at start-up. It is also the source of the full
feature set sent to a model that has no allowlist. ``kind`` and ``zero_fraction`` only
guide the demo data generator.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from contract.dtypes import NUMPY_DTYPES

ENTITIES = ("request", "candidate")
KINDS = ("scalar", "ratio", "counter", "embedding", "ids")


class Entity(str, Enum):
    REQUEST = "request"  # one value per request (user, context); sent once as [1, ...]
    CANDIDATE = "candidate"  # one value per candidate item; sent as [N, ...]


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One feature of the catalog."""

    name: str
    """Feature id, unique in the catalog."""
    entity: Entity
    """Which entity the value belongs to."""
    dtype: str
    """numpy dtype name (one of ``contract.dtypes.NUMPY_DTYPES``)."""
    shape: tuple[int, ...] = ()
    """Per-entity shape: () scalar, (64,) embedding, (32,) padded id list."""
    default: float = 0.0
    """Value used for ids the store does not have."""
    kind: str = "scalar"
    """Value distribution for the demo generator (one of ``KINDS``)."""
    zero_fraction: float = 0.0
    """Share of exact zeros the generator produces (sparse features)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"FeatureSpec.name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "entity", Entity(self.entity))
        if self.dtype not in NUMPY_DTYPES:
            raise ValueError(f"feature {self.name!r}: dtype must be one of {NUMPY_DTYPES}, got {self.dtype!r}")
        shape = tuple(self.shape)
        if any((not isinstance(d, int)) or d <= 0 for d in shape):
            raise ValueError(f"feature {self.name!r}: shape dims must be positive ints, got {list(shape)}")
        object.__setattr__(self, "shape", shape)
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 <= self.zero_fraction <= 1.0:
            raise ValueError(f"feature {self.name!r}: zero_fraction must be in [0, 1], got {self.zero_fraction}")

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def row_bytes(self) -> int:
        """Bytes of one entity's value."""
        return math.prod(self.shape) * self.np_dtype.itemsize

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["entity"] = self.entity.value
        out["shape"] = list(self.shape)
        return out


_FIELDS = {"name", "entity", "dtype", "shape", "default", "kind", "zero_fraction"}


@dataclass(frozen=True, slots=True)
class FeatureCatalog:
    """All features a root can fetch, by name."""

    features: Mapping[str, FeatureSpec] = field(default_factory=dict)

    @classmethod
    def of(cls, specs: Iterable[FeatureSpec]) -> "FeatureCatalog":
        by_name: dict[str, FeatureSpec] = {}
        for spec in specs:
            if spec.name in by_name:
                raise ValueError(f"duplicate feature {spec.name!r} in catalog")
            by_name[spec.name] = spec
        return cls(by_name)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureCatalog":
        try:
            doc = json.loads(Path(path).read_bytes())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"catalog {path}: {exc}") from None
        if not isinstance(doc, dict) or set(doc) != {"features"} or not isinstance(doc["features"], list):
            raise ValueError(f"catalog {path}: expected an object with one key 'features' holding a list")
        specs = []
        for i, item in enumerate(doc["features"]):
            if not isinstance(item, dict):
                raise ValueError(f"catalog {path}: features[{i}] is not an object")
            unknown = set(item) - _FIELDS
            if unknown:
                raise ValueError(f"catalog {path}: features[{i}] has unknown keys {sorted(unknown)}")
            try:
                specs.append(FeatureSpec(**item))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"catalog {path}: features[{i}]: {exc}") from None
        return cls.of(specs)

    def save(self, path: str | Path) -> None:
        doc = {"features": [s.to_json() for s in self.features.values()]}
        Path(path).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    def __getitem__(self, name: str) -> FeatureSpec:
        return self.features[name]

    def __contains__(self, name: object) -> bool:
        return name in self.features

    def __len__(self) -> int:
        return len(self.features)

    def names(self, entity: Entity | None = None) -> list[str]:
        return [n for n, s in self.features.items() if entity is None or s.entity is entity]
