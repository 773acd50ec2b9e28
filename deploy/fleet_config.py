"""The plan's fleet settings: ``[delivery]`` (local directories or Kubernetes), ``[waves]``
(production in waves with bake time and gates) and ``[shadow]`` (canary analysis on the
traffic production roots mirror). Frozen dataclasses validated in ``__post_init__``; pure.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, fields
from typing import Any, Mapping


class FleetConfigError(ValueError):
    """A fleet setting is invalid; the message names the field."""


def _number(where: str, value: object, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FleetConfigError(f"{where} must be a finite number, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo):
        raise FleetConfigError(f"{where} must be in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")
    return float(value)


def _argv(where: str, value: object) -> tuple[str, ...]:
    """A command as a list of arguments, or a string split the way a shell would."""
    if isinstance(value, str):
        value = shlex.split(value)
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        raise FleetConfigError(f"{where} must be a non-empty list of strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """How stages reach the hosts: ``local`` writes files and copies version directories on
    this machine; ``kubernetes`` renders ConfigMaps and model-store Jobs and pipes them to
    ``apply_command``."""

    kind: str = "local"
    """``local`` or ``kubernetes``."""
    apply_command: tuple[str, ...] = ("kubectl", "apply", "-f", "-")
    """Reads a YAML stream of objects on stdin and applies them (a GitOps commit script fits)."""
    get_command: tuple[str, ...] = ("kubectl", "get", "--ignore-not-found", "-o", "json", "-f", "-")
    """Reads one object on stdin, prints it as it is in the cluster (JSON), or nothing if absent."""
    delete_command: tuple[str, ...] = ("kubectl", "delete", "--ignore-not-found", "-f", "-")
    """Reads objects on stdin and deletes them (rollback of a ConfigMap that did not exist)."""
    command_timeout_s: float = 120.0
    """Longest one command may run before the stage fails."""
    image: str = "rootleaf/rootleaf:0.1.0"
    """Image of the model-store Jobs (``deploy/docker``; it runs ``rootleaf model-store``)."""
    models_claim: str = "rootleaf-models"
    """Model store claim, ``<claim>/<partition>/<model>/<version>/`` (``deploy/k8s/base/models-pvc.yaml``)."""
    source_claim: str = "rootleaf-model-source"
    """Claim holding ``<model>/<version>/`` as in ``--models`` (the upload step fills it)."""

    def __post_init__(self) -> None:
        if self.kind not in ("local", "kubernetes"):
            raise FleetConfigError(f"delivery.kind must be 'local' or 'kubernetes', got {self.kind!r}")
        for name in ("apply_command", "get_command", "delete_command"):
            object.__setattr__(self, name, _argv(f"delivery.{name}", getattr(self, name)))
        _number("delivery.command_timeout_s", self.command_timeout_s, 0.0, 3600.0, lo_open=True)
        for name in ("image", "models_claim", "source_claim"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise FleetConfigError(f"delivery.{name} must be a non-empty string, got {getattr(self, name)!r}")

    @property
    def kubernetes(self) -> bool:
        return self.kind == "kubernetes"


@dataclass(frozen=True, slots=True)
class WavesConfig:
    """Stages 4 and 5 in waves: wave i takes the next ``roots[i]`` production roots and
    ``leaves[i]`` production leaves in plan order; whatever is left is the last wave. After
    every wave: bake, then the gates (hosts still report the delivery, probe and scraped
    error rates within ``max_error_rate``); a failed gate rolls back every wave and the canary."""

    roots: tuple[int, ...] = (1,)
    """Production roots in each wave before the last."""
    leaves: tuple[int, ...] = (1,)
    """Production leaves in each wave before the last."""
    bake_s: float = 30.0
    """Seconds a wave serves before its gate is judged."""
    probe_requests: int = 20
    """Score requests the gate sends through each root of the waves so far."""
    max_error_rate: float = 0.01
    """Largest error rate (probe results, and roots' and leaves' scraped results over the bake)."""
    request_timeout_s: float = 5.0
    """Deadline of each probe request."""

    def __post_init__(self) -> None:
        for name in ("roots", "leaves"):
            value = tuple(getattr(self, name))
            if not value or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
                raise FleetConfigError(f"waves.{name} must be a non-empty list of integers >= 0, got {list(value)!r}")
            object.__setattr__(self, name, value)
        if len(self.roots) != len(self.leaves):
            raise FleetConfigError(f"waves.roots and waves.leaves must have one entry per wave, "
                                   f"got {len(self.roots)} and {len(self.leaves)}")
        _number("waves.bake_s", self.bake_s, 0.0, 86400.0)
        if isinstance(self.probe_requests, bool) or not isinstance(self.probe_requests, int) or self.probe_requests < 0:
            raise FleetConfigError(f"waves.probe_requests must be an integer >= 0, got {self.probe_requests!r}")
        _number("waves.max_error_rate", self.max_error_rate, 0.0, 1.0)
        _number("waves.request_timeout_s", self.request_timeout_s, 0.0, 600.0, lo_open=True)


@dataclass(frozen=True, slots=True)
class ShadowAnalysisConfig:
    """Stage 3 on mirrored traffic: production roots (``[shadow]`` in their root config)
    mirror a sample of their requests to the canary root; the analysis waits for
    ``min_requests`` of them (at most ``window_s``) and judges canary against production on
    that window, plus the mirrors' paired comparison of both answers."""

    min_requests: int = 100
    """Mirrored requests the canary root must have answered in the window."""
    window_s: float = 120.0
    """Longest the window stays open; fewer than ``min_requests`` by then is a FAIL."""
    max_mismatch_rate: float = 0.01
    """Largest share of mirrored results whose canary answer failed or differed from
    production's by more than the mirror's ``max_score_diff``."""

    def __post_init__(self) -> None:
        if isinstance(self.min_requests, bool) or not isinstance(self.min_requests, int) or self.min_requests < 1:
            raise FleetConfigError(f"shadow.min_requests must be an integer >= 1, got {self.min_requests!r}")
        _number("shadow.window_s", self.window_s, 0.0, 86400.0, lo_open=True)
        _number("shadow.max_mismatch_rate", self.max_mismatch_rate, 0.0, 1.0)


def from_table(cls: Any, table: object, where: str) -> Any:
    """``cls(**table)`` rejecting unknown keys; lists become tuples."""
    if not isinstance(table, Mapping):
        raise FleetConfigError(f"[{where}] must be a table")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise FleetConfigError(f"[{where}]: unknown key(s) {unknown}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise FleetConfigError(f"[{where}]: {exc}") from None
