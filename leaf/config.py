"""Leaf configuration: one frozen dataclass per component, validated on construction.

Built once (from CLI flags or a mapping) before the server starts; immutable afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from contract.names import name_problem
from leaf.payload_views import DEFAULT_MAX_MODELS
from wire.codec import DecodeLimits, largest_tensors_bytes
from transport.tls import PLAINTEXT, TlsConfig
from transport.tracing import TracingConfig

DEVICES = ("auto", "cpu", "cuda")
# The derived request limit never exceeds this (a leaf's former fixed limit); gRPC's own
# bound on a message length is what ``max_receive_message_bytes`` may reach.
DEFAULT_RECEIVE_CAP = 256 * 1024 * 1024
MAX_RECEIVE_BYTES = 2**31 - 1


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions of each model are loaded."""

    kind: Literal["latest", "all", "specific"] = "latest"
    """``latest``: the newest ``count`` loadable versions; ``all``; ``specific``: ``versions``."""
    count: int = 1
    """How many of the newest versions ``latest`` keeps."""
    versions: tuple[str, ...] = ()
    """The versions ``specific`` loads (those present and loadable)."""

    def __post_init__(self) -> None:
        if self.kind not in ("latest", "all", "specific"):
            raise ValueError(f"VersionPolicy.kind must be latest|all|specific, got {self.kind!r}")
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"VersionPolicy.count must be a positive int, got {self.count!r}")
        if self.kind == "specific" and not self.versions:
            raise ValueError("VersionPolicy.versions must not be empty for kind 'specific'")
        for v in self.versions:
            if name_problem(v):
                raise ValueError(f"VersionPolicy.versions: {v!r} {name_problem(v)}")

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        """``latest``, ``latest:N``, ``all``, or a comma-separated list like ``1,2``."""
        text = text.strip()
        if text == "latest":
            return cls("latest", 1)
        if text.startswith("latest:"):
            try:
                return cls("latest", int(text.split(":", 1)[1]))
            except ValueError:
                raise ValueError(f"bad version policy {text!r}: count must be an int") from None
        if text == "all":
            return cls("all")
        versions = tuple(v.strip() for v in text.split(",") if v.strip())
        if not versions:
            raise ValueError(f"bad version policy {text!r}")
        return cls("specific", versions=versions)

    def select(self, available: list[str]) -> list[str]:
        """The versions to load out of ``available`` (sorted oldest first)."""
        if self.kind == "all":
            return list(available)
        if self.kind == "latest":
            return list(available[-self.count :])
        wanted = set(self.versions)
        return [v for v in available if v in wanted]


@dataclass(frozen=True, slots=True)
class LeafConfig:
    """Everything a leaf partition server needs."""

    repo: Path
    """Model repository: ``<repo>/<model>/<version>/model.pt``."""
    host: str = "127.0.0.1"
    """Address the gRPC server binds."""
    port: int = 0
    """gRPC port; 0 picks a free one (reported by ``create_server``)."""
    models: tuple[str, ...] | None = None
    """Models this leaf hosts; None hosts every model directory in the repository."""
    device: str = "auto"
    """``auto`` (cuda when available, else cpu), ``cpu`` or ``cuda``."""
    versions: VersionPolicy = field(default_factory=VersionPolicy)
    """Which versions of each model are loaded."""
    max_batch_candidates: int = 4096
    """Most candidates merged into one forward; 0 turns merging off (one request per forward)."""
    max_queue_delay_ms: float = 1.0
    """How long the first request of a batch may wait for others while the device is idle."""
    max_queue_requests: int = 256
    """Most requests waiting per model version; beyond it requests get RESOURCE_EXHAUSTED."""
    torch_threads: int = 0
    """Intra-op threads for CPU inference; 0 keeps torch's default."""
    metrics_port: int = 0
    """Prometheus HTTP port; 0 disables the endpoint."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds."""
    recheck_interval_s: float = 30.0
    """Periodic repository re-scan, for file systems whose change events get lost."""
    decode_limits: DecodeLimits = field(default_factory=DecodeLimits)
    """Bounds applied to untrusted request tensors."""
    max_candidates: int = 1_000_000
    """Largest ``num_candidates`` accepted in one request."""
    max_inflight_bytes: int = 2 * 1024**3
    """Most bytes of admitted requests at once (inputs at ``num_candidates`` rows, declared
    sizes), queued or running; beyond it requests get RESOURCE_EXHAUSTED before decoding.
    At least ``decode_limits.max_total_raw_bytes``, so any valid request fits alone."""
    max_models: int = DEFAULT_MAX_MODELS
    """Most models in one ``ScorePartition`` call (a root sends at most its own ``max_models``)."""
    max_receive_message_bytes: int = 0
    """Largest request message gRPC accepts (beyond it: RESOURCE_EXHAUSTED before any parsing);
    0 = sized from ``decode_limits`` and ``max_models`` (the largest valid request), at most
    256 MiB. See ``receive_message_bytes``."""
    grace_s: float = 5.0
    """Shutdown grace period for in-flight requests."""
    tls: TlsConfig = PLAINTEXT
    """Server TLS: cert_file + key_file; client_ca_file set = callers must present a certificate."""
    tracing: TracingConfig = field(default_factory=TracingConfig)
    """OpenTelemetry spans over OTLP/gRPC; off when ``tracing.endpoint`` is empty."""

    def __post_init__(self) -> None:
        if not isinstance(self.tracing, TracingConfig):
            raise ValueError(f"LeafConfig.tracing must be a TracingConfig, got {self.tracing!r}")
        if not isinstance(self.tls, TlsConfig):
            raise ValueError(f"LeafConfig.tls must be a TlsConfig, got {self.tls!r}")
        self.tls.check_server("LeafConfig.tls")
        if not isinstance(self.repo, Path):
            object.__setattr__(self, "repo", Path(self.repo))
        if self.models is not None:
            if isinstance(self.models, str) or not all(isinstance(m, str) and m for m in self.models):
                raise ValueError(f"LeafConfig.models must be a tuple of names, got {self.models!r}")
            for model in self.models:
                if name_problem(model):
                    raise ValueError(f"LeafConfig.models: {model!r} {name_problem(model)}")
            object.__setattr__(self, "models", tuple(self.models))
        if self.device not in DEVICES:
            raise ValueError(f"LeafConfig.device must be one of {DEVICES}, got {self.device!r}")
        if not isinstance(self.versions, VersionPolicy):
            raise ValueError(f"LeafConfig.versions must be a VersionPolicy, got {self.versions!r}")
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 65535:
                raise ValueError(f"LeafConfig.{name} must be a port number, got {value!r}")
        for name in ("max_batch_candidates", "torch_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"LeafConfig.{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.decode_limits, DecodeLimits):
            raise ValueError(f"LeafConfig.decode_limits must be a DecodeLimits, got {self.decode_limits!r}")
        if (
            isinstance(self.max_inflight_bytes, bool)
            or not isinstance(self.max_inflight_bytes, int)
            or self.max_inflight_bytes < self.decode_limits.max_total_raw_bytes
        ):
            raise ValueError(
                "LeafConfig.max_inflight_bytes must be an int >= decode_limits.max_total_raw_bytes "
                f"({self.decode_limits.max_total_raw_bytes}), got {self.max_inflight_bytes!r}"
            )
        for name in ("max_queue_requests", "max_candidates", "max_models"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LeafConfig.{name} must be an int >= 1, got {value!r}")
        for name in ("max_queue_delay_ms", "grace_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"LeafConfig.{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.recheck_interval_s, (int, float)) or self.recheck_interval_s <= 0:
            raise ValueError(
                f"LeafConfig.recheck_interval_s must be > 0, got {self.recheck_interval_s!r}"
            )
        if not self.host:
            raise ValueError("LeafConfig.host must not be empty")
        value = self.max_receive_message_bytes
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RECEIVE_BYTES:
            raise ValueError(
                f"LeafConfig.max_receive_message_bytes must be an int in [0, {MAX_RECEIVE_BYTES}], got {value!r}"
            )

    @property
    def receive_message_bytes(self) -> int:
        """The request size limit in force: ``max_receive_message_bytes``, or when 0 the
        largest valid request (``decode_limits.max_tensors`` tensors decoding to
        ``max_total_raw_bytes`` and ``max_models`` models each naming every tensor), capped at
        ``DEFAULT_RECEIVE_CAP``."""
        if self.max_receive_message_bytes:
            return self.max_receive_message_bytes
        limits = self.decode_limits
        tensors = largest_tensors_bytes(limits, limits.max_tensors, limits.max_total_raw_bytes)
        models = self.max_models * (2 * 4 * 255 + 5 * limits.max_tensors + 16)
        return min(DEFAULT_RECEIVE_CAP, tensors + models + 4096)
