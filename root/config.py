"""Root configuration: one TOML file validated into frozen dataclasses.

Every section maps onto one dataclass; unknown keys are rejected with the key named, and
each ``__post_init__`` names the bad field and value. Relative paths (catalog, bundle files,
local store directory) resolve against the config file's directory. Immutable once loaded;
shared read-only by every coroutine of the root's event loop.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlsplit

from transport.tls import PLAINTEXT, TlsConfig
from transport.tracing import TracingConfig
from wire.codec import DEFAULT_LIMITS, largest_tensors_bytes

COMPRESSIONS = ("lz4", "none", "auto")
STORE_KINDS = ("local", "redis", "redis-cluster")
CLUSTER_URL_SCHEMES = ("redis-cluster://", "redis+cluster://")
STORE_ERROR_POLICIES = ("fail", "defaults")
MAX_RECEIVE_BYTES = 2**31 - 1  # gRPC's bound on a message length


def _check_int(owner: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name} must be an int >= {minimum}, got {value!r}")


def _check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be true or false, got {value!r}")


# Query parameters of a rediss:// URL that leave the connection encrypted but unverified:
# redis-py accepts them, and the URL still reads as TLS.
_UNVERIFIED_TLS = {"ssl_cert_reqs": ("none", "optional"), "ssl_check_hostname": ("false", "0", "no", "n", "f", "off")}


def _check_store_url(url: str) -> None:
    """Refuse a rediss:// URL whose query turns certificate or host name checks off."""
    for name, value in parse_qsl(urlsplit(url).query):
        if value.strip().lower() in _UNVERIFIED_TLS.get(name, ()):
            raise ValueError(
                f"feature_store.url: {name}={value} turns off verification of the Redis server's "
                f"certificate; remove it (give ssl_ca_certs for a private CA)"
            )


def _check_target(owner: str, value: Any) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"{owner} must be a non-empty 'host:port' or gRPC target string, got {value!r}")


@dataclass(frozen=True, slots=True)
class PartitionConfig:
    """One leaf partition: where it runs and which models it hosts."""

    name: str
    """Partition name (metrics label)."""
    targets: tuple[str, ...]
    """gRPC targets of the partition's leaves (``host:port`` or ``dns:///name:port``); round-robin."""
    models: tuple[str, ...]
    """Models this partition hosts."""

    def __post_init__(self) -> None:
        owner = f"partitions.{self.name}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"partition name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "models", tuple(self.models))
        if not self.targets:
            raise ValueError(f"{owner}.targets must list at least one target, got []")
        for target in self.targets:
            _check_target(f"{owner}.targets", target)
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"{owner}.targets has duplicates: {list(self.targets)}")
        if not self.models:
            raise ValueError(f"{owner}.models must list at least one model, got []")
        for model in self.models:
            if not isinstance(model, str) or not model:
                raise ValueError(f"{owner}.models must hold non-empty strings, got {model!r}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"{owner}.models has duplicates: {list(self.models)}")


@dataclass(frozen=True, slots=True)
class FeatureStoreConfig:
    """Where feature values come from."""

    kind: str = "local"
    """``local`` (memory-mapped column files), ``redis`` or ``redis-cluster``."""
    path: Path | None = None
    """Directory of the local store (required for ``local``)."""
    url: str | None = None
    """Redis URL, e.g. ``redis://127.0.0.1:6379/0`` (required for ``redis``); for
    ``redis-cluster`` the startup nodes, ``redis-cluster://[user:pass@]host:port,host:port``."""
    pool_size: int = 16
    """Connections in the Redis pool (per master for a cluster)."""
    timeout_ms: int = 100
    """Per-fetch timeout of a remote store; a timeout fails the request UNAVAILABLE."""
    key_prefix: str = "rl"
    """Key prefix in Redis."""
    on_error: str = "fail"
    """When the store fails or exceeds ``fetch_timeout_ms``: ``fail`` (the request fails
    UNAVAILABLE) or ``defaults`` (the request is served with every feature's catalog
    default, counted in ``rootleaf_root_feature_store_degraded_total``)."""
    fetch_timeout_ms: int = 0
    """Budget for one request's fetch from the store (any kind); 0 = only the request deadline."""

    def __post_init__(self) -> None:
        if self.on_error not in STORE_ERROR_POLICIES:
            raise ValueError(
                f"feature_store.on_error must be one of {STORE_ERROR_POLICIES}, got {self.on_error!r}"
            )
        _check_int("feature_store", "fetch_timeout_ms", self.fetch_timeout_ms, 0)
        if self.kind not in STORE_KINDS:
            raise ValueError(f"feature_store.kind must be one of {STORE_KINDS}, got {self.kind!r}")
        if self.kind == "local" and self.path is None:
            raise ValueError("feature_store.path is required when kind = 'local', got None")
        if self.kind in ("redis", "redis-cluster") and not self.url:
            raise ValueError(f"feature_store.url is required when kind = {self.kind!r}, got {self.url!r}")
        if self.url and (self.kind == "redis-cluster") != str(self.url).startswith(CLUSTER_URL_SCHEMES):
            raise ValueError(
                f"feature_store.url {self.url!r} does not fit kind = {self.kind!r}: "
                f"redis-cluster takes {' or '.join(CLUSTER_URL_SCHEMES)}, redis takes redis://"
            )
        if self.url:
            _check_store_url(str(self.url))
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))
        _check_int("feature_store", "pool_size", self.pool_size, 1)
        _check_int("feature_store", "timeout_ms", self.timeout_ms, 1)
        if not isinstance(self.key_prefix, str) or not self.key_prefix:
            raise ValueError(f"feature_store.key_prefix must be a non-empty string, got {self.key_prefix!r}")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The in-memory feature cache in front of the store."""

    max_bytes: int = 256 * 1024 * 1024
    """Upper bound of memory the cache allocates (0 disables the cache)."""
    ttl_s: float = 60.0
    """Seconds a cached value stays valid."""

    def __post_init__(self) -> None:
        _check_int("cache", "max_bytes", self.max_bytes, 0)
        if isinstance(self.ttl_s, bool) or not isinstance(self.ttl_s, (int, float)) or not self.ttl_s > 0:
            raise ValueError(f"cache.ttl_s must be a number > 0, got {self.ttl_s!r}")
        object.__setattr__(self, "ttl_s", float(self.ttl_s))


def _shadow_number(name: str, value: object, lo: float, hi: float, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < lo or value > hi or (lo_open and value == lo):
        raise ValueError(f"shadow.{name} must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    """``[shadow]`` of a root config: mirror a sample of requests to a canary root."""

    target: str = ""
    """Canary root address host:port; empty = no mirroring. Reached with ``[leaf_tls]``."""
    sample: float = 0.1
    """Fraction of Score requests mirrored (0-1)."""
    max_per_s: float = 50.0
    """Most mirrored requests per second (token bucket, burst of one second)."""
    max_in_flight: int = 8
    """Most mirrored calls outstanding; more are dropped."""
    timeout_s: float = 2.0
    """Deadline of each mirrored call."""
    max_score_diff: float = 0.05
    """A mirrored result whose first output differs from production's by more than this
    (max absolute difference) counts as ``differ``."""

    def __post_init__(self) -> None:
        if not isinstance(self.target, str):
            raise ValueError(f"shadow.target must be host:port, got {self.target!r}")
        if self.target and (":" not in self.target or not self.target.rsplit(":", 1)[1].isdigit()):
            raise ValueError(f"shadow.target must be host:port, got {self.target!r}")
        _shadow_number("sample", self.sample, 0.0, 1.0)
        _shadow_number("max_per_s", self.max_per_s, 0.0, 1e6, lo_open=True)
        _shadow_number("timeout_s", self.timeout_s, 0.0, 600.0, lo_open=True)
        _shadow_number("max_score_diff", self.max_score_diff, 0.0, math.inf)
        if isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int) or self.max_in_flight < 1:
            raise ValueError(f"shadow.max_in_flight must be an integer >= 1, got {self.max_in_flight!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.target) and self.sample > 0


@dataclass(frozen=True, slots=True)
class PartitionTimeoutConfig:
    """``[partition_timeout]``: how long one attempt of a leaf partition call may take, on the
    partition's own terms, however long the client's deadline (``root.partition_timeout``)."""

    p99_multiple: float = 4.0
    """The timeout is this many times the partition's recent p99 (of answered calls)."""
    floor_ms: int = 250
    """Never less than this (a partition answering in 1 ms still gets it)."""
    cap_ms: int = 2000
    """Never more than this; also the timeout until the partition has answered enough calls
    to have a p99. ``floor_ms = cap_ms`` gives a fixed timeout."""

    def __post_init__(self) -> None:
        multiple = self.p99_multiple
        if isinstance(multiple, bool) or not isinstance(multiple, (int, float)) or not 1.0 <= multiple <= 1000.0:
            raise ValueError(f"partition_timeout.p99_multiple must be a number in [1, 1000], got {multiple!r}")
        object.__setattr__(self, "p99_multiple", float(multiple))
        _check_int("partition_timeout", "floor_ms", self.floor_ms, 1)
        _check_int("partition_timeout", "cap_ms", self.cap_ms, 1)
        if self.cap_ms < self.floor_ms:
            raise ValueError(
                f"partition_timeout.cap_ms must be >= floor_ms ({self.floor_ms}), got {self.cap_ms!r}"
            )


@dataclass(frozen=True, slots=True)
class RootConfig:
    """Everything a root needs to serve."""

    catalog: Path
    """Feature catalog JSON (``{"features": [...]}``)."""
    partitions: Mapping[str, PartitionConfig]
    """Leaf partitions by name."""
    feature_store: FeatureStoreConfig
    """The feature store behind the cache."""
    listen: str = "127.0.0.1:0"
    """Address the gRPC server binds (port 0 picks a free port)."""
    metrics_port: int = 0
    """Prometheus HTTP port (0 = no metrics endpoint)."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds."""
    trim: bool = True
    """Send each model only its allowlisted features; false = every model gets every fetched
    feature and the full catalog is fetched (the baseline)."""
    compression: str = "lz4"
    """Per-tensor payload compression: ``lz4`` (adaptive), ``none``, or ``auto``: per
    partition, LZ4 when the link bounds rather than the CPU (``root.compression_policy``;
    needs ``link_gbps``; per-model calls use LZ4)."""
    link_gbps: float = 0.0
    """The root's egress toward its leaves, Gbit/s, for ``compression = "auto"`` (0 = not
    known: the link is taken never to bound and nothing is compressed)."""
    dedup_request_features: bool = True
    """Send request-level features once as ``[1, ...]``; false tiles them to ``[N, ...]``."""
    partition_calls: bool = True
    """One ``Leaf/ScorePartition`` call per partition, carrying every requested model it hosts
    and the union of their features once; false = one ``Leaf/Score`` call per model (leaves
    that predate ``ScorePartition``)."""
    default_deadline_ms: int = 1000
    """Deadline applied when the client sets none."""
    max_candidates: int = 4096
    """Most candidates in one request."""
    max_models: int = 32
    """Most models in one request."""
    max_in_flight: int = 256
    """Concurrent Score calls; more are rejected RESOURCE_EXHAUSTED."""
    max_request_features: int = 1024
    """Most client-supplied request features (``request_features``) in one request."""
    max_request_feature_bytes: int = 4 * 1024 * 1024
    """Most decoded bytes of all client-supplied request features of one request (declared
    sizes are checked before anything is decompressed; real ones are a few KB)."""
    max_receive_message_bytes: int = 0
    """Largest ``Score`` request gRPC accepts (beyond it: RESOURCE_EXHAUSTED before any
    parsing); 0 = sized from the request limits above (``receive_message_bytes``: about
    5.3 MiB with the defaults)."""
    shutdown_grace_s: float = 5.0
    """Seconds in-flight calls get to finish on SIGTERM/SIGINT."""
    workers: int = 0
    """Server processes sharing the port (``root.supervisor``); 0 = one per available core,
    at most 8; 1 = a single process, no supervisor."""
    bundles: Mapping[str, Path] = field(default_factory=dict)
    """Bundle name -> path of its bundle-level ``module_info.json``."""
    bundle_max_bytes: int = 64 * 1024 * 1024
    """A bundle file larger than this is refused (its last good map stays; alert on
    ``rootleaf_trimmer_bundle_healthy`` 0)."""
    kill_switch_file: Path | None = None
    """Hot-reloaded file that turns trimming off for some or all models without a restart
    (``{"trimming_off": ["*"]}``; docs/versions-and-trimming.md); None = no kill switch."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """The feature cache."""
    partition_timeout: PartitionTimeoutConfig = field(default_factory=PartitionTimeoutConfig)
    """How long one attempt of a partition call may take (whatever the client's deadline)."""
    tls: TlsConfig = PLAINTEXT
    """``[tls]``: the root's server side (cert_file + key_file; client_ca_file = mutual TLS)."""
    leaf_tls: TlsConfig = PLAINTEXT
    """``[leaf_tls]``: the root's channels to every leaf (ca_file; cert_file + key_file for mTLS)."""
    status_detail: bool = False
    """``Root/Status`` also reports leaf targets, per-address health, bundle file paths and
    load errors (off: names, counts, hashes and switches only; see the trust model)."""
    reflection: bool = False
    """Serve gRPC server reflection (service and proto file descriptors)."""
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    """``[shadow]``: mirror a sample of Score requests to a canary root (off without a target)."""
    hedging: bool = True
    """Route each leaf call to the replica with the lower observed latency (of two) and send
    a second copy to another replica when the first is unanswered after the partition's
    recent p95 (first answer wins; at most 10% of calls hedge). False: round-robin only."""
    tracing: TracingConfig = field(default_factory=TracingConfig)
    """``[tracing]``: OpenTelemetry spans over OTLP/gRPC (``endpoint``, ``sample_ratio``, ...); off when no endpoint."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "catalog", Path(self.catalog))
        if not isinstance(self.partition_timeout, PartitionTimeoutConfig):
            raise ValueError(f"partition_timeout must be a PartitionTimeoutConfig, got {self.partition_timeout!r}")
        for name in ("tls", "leaf_tls"):
            if not isinstance(getattr(self, name), TlsConfig):
                raise ValueError(f"{name} must be a TlsConfig, got {getattr(self, name)!r}")
        self.tls.check_server("tls")
        self.leaf_tls.check_client("leaf_tls")
        if not isinstance(self.tracing, TracingConfig):
            raise ValueError(f"tracing must be a TracingConfig, got {self.tracing!r}")
        _check_target("listen", self.listen)
        _check_int("root", "metrics_port", self.metrics_port, 0)
        if self.metrics_port > 65535:
            raise ValueError(f"metrics_port must be <= 65535, got {self.metrics_port}")
        if not isinstance(self.metrics_host, str) or not self.metrics_host:
            raise ValueError(f"metrics_host must be a non-empty string, got {self.metrics_host!r}")
        _check_bool("root", "trim", self.trim)
        _check_bool("root", "status_detail", self.status_detail)
        _check_bool("root", "reflection", self.reflection)
        _check_bool("root", "hedging", self.hedging)
        _check_bool("root", "dedup_request_features", self.dedup_request_features)
        _check_bool("root", "partition_calls", self.partition_calls)
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        link = self.link_gbps
        if isinstance(link, bool) or not isinstance(link, (int, float)) or not 0.0 <= link <= 1e6:
            raise ValueError(f"link_gbps must be a number in [0, 1e6], got {link!r}")
        object.__setattr__(self, "link_gbps", float(link))
        _check_int("root", "default_deadline_ms", self.default_deadline_ms, 1)
        _check_int("root", "max_candidates", self.max_candidates, 1)
        _check_int("root", "max_models", self.max_models, 1)
        _check_int("root", "max_in_flight", self.max_in_flight, 1)
        _check_int("root", "workers", self.workers, 0)
        _check_int("root", "max_request_features", self.max_request_features, 1)
        _check_int("root", "bundle_max_bytes", self.bundle_max_bytes, 1)
        if self.kill_switch_file is not None:
            if not isinstance(self.kill_switch_file, (str, Path)) or not str(self.kill_switch_file):
                raise ValueError(f"kill_switch_file must be a path string, got {self.kill_switch_file!r}")
            object.__setattr__(self, "kill_switch_file", Path(self.kill_switch_file))
        _check_int("root", "max_request_feature_bytes", self.max_request_feature_bytes, 1)
        _check_int("root", "max_receive_message_bytes", self.max_receive_message_bytes, 0)
        if self.max_receive_message_bytes > MAX_RECEIVE_BYTES:
            raise ValueError(
                f"max_receive_message_bytes must be <= {MAX_RECEIVE_BYTES}, got {self.max_receive_message_bytes}"
            )
        if isinstance(self.shutdown_grace_s, bool) or not isinstance(self.shutdown_grace_s, (int, float)) or self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s must be a number >= 0, got {self.shutdown_grace_s!r}")
        bundles: dict[str, Path] = {}
        for name, path in dict(self.bundles).items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"bundles: names must be non-empty strings, got {name!r}")
            if not isinstance(path, (str, Path)) or not str(path):
                raise ValueError(f"bundles.{name} must be a path string, got {path!r}")
            bundles[name] = Path(path)
        object.__setattr__(self, "bundles", MappingProxyType(bundles))
        partitions = dict(self.partitions)
        if not partitions:
            raise ValueError("partitions must define at least one partition, got none")
        owner: dict[str, str] = {}
        for name, part in partitions.items():
            if not isinstance(part, PartitionConfig) or part.name != name:
                raise ValueError(f"partitions.{name} must be a PartitionConfig named {name!r}")
            for model in part.models:
                if model in owner:
                    raise ValueError(
                        f"partitions.{name}.models: model {model!r} is already hosted by partition {owner[model]!r}"
                    )
                owner[model] = name
        object.__setattr__(self, "partitions", MappingProxyType(partitions))

    @property
    def receive_message_bytes(self) -> int:
        """The request size limit in force: ``max_receive_message_bytes``, or when 0 the
        largest valid request: ``max_candidates`` ids, ``max_models`` references (name and
        version of 255 bytes each), ``max_request_features`` tensors decoding to
        ``max_request_feature_bytes``, and 64 KiB for the request id and field framing."""
        if self.max_receive_message_bytes:
            return self.max_receive_message_bytes
        features = largest_tensors_bytes(DEFAULT_LIMITS, self.max_request_features, self.max_request_feature_bytes)
        return self.max_candidates * 11 + self.max_models * (2 * 255 + 16) + features + 65536

    def settings(self) -> dict[str, str]:
        """The switches, as strings (reported by ``Root.Status``)."""
        return {
            "trim": str(self.trim).lower(),
            "compression": self.compression,
            "dedup_request_features": str(self.dedup_request_features).lower(),
            "partition_calls": str(self.partition_calls).lower(),
            "default_deadline_ms": str(self.default_deadline_ms),
            "max_candidates": str(self.max_candidates),
            "max_models": str(self.max_models),
            "max_in_flight": str(self.max_in_flight),
            "workers": str(self.workers),
            "max_request_features": str(self.max_request_features),
            "max_request_feature_bytes": str(self.max_request_feature_bytes),
            "max_receive_message_bytes": str(self.receive_message_bytes),
            "feature_store": self.feature_store.kind,
            "cache_max_bytes": str(self.cache.max_bytes),
            "cache_ttl_s": str(self.cache.ttl_s),
            "tls": _tls_mode(self.tls, self.tls.client_ca_file),
            "leaf_tls": _tls_mode(self.leaf_tls, self.leaf_tls.cert_file),
            "status_detail": str(self.status_detail).lower(),
            "reflection": str(self.reflection).lower(),
            "hedging": str(self.hedging).lower(),
            "partition_timeout": _timeout_rule(self.partition_timeout),
            "shadow": f"{self.shadow.target} sample {self.shadow.sample:g}" if self.shadow.enabled else "off",
            "tracing": f"sample_ratio={self.tracing.sample_ratio}" if self.tracing.enabled else "off",
        }


def _timeout_rule(cfg: PartitionTimeoutConfig) -> str:
    return f"{cfg.p99_multiple:g}x p99 in [{cfg.floor_ms}, {cfg.cap_ms}] ms"


def _tls_mode(tls: TlsConfig, mutual: str) -> str:
    return "mutual" if mutual else ("on" if tls.enabled else "off")


_TOP_KEYS = {f.name for f in fields(RootConfig)}
_SECTION_TYPES: dict[str, type] = {"feature_store": FeatureStoreConfig, "cache": CacheConfig, "shadow": ShadowConfig,
                                   "tracing": TracingConfig, "partition_timeout": PartitionTimeoutConfig}
_TLS_SECTIONS = ("tls", "leaf_tls")
_PARTITION_KEYS = {"targets", "models"}


def _reject_unknown(where: str, doc: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (allowed: {sorted(allowed)})")


def _resolve(base: Path, value: Any, field_name: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field_name} must be a non-empty path string, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def root_config_from_dict(doc: Mapping[str, Any], base_dir: Path) -> RootConfig:
    """Build a ``RootConfig`` from a parsed TOML document; paths resolve against ``base_dir``."""
    _reject_unknown("root config", doc, _TOP_KEYS)
    kwargs: dict[str, Any] = {
        k: v for k, v in doc.items() if k not in ("partitions", "bundles", "catalog", *_SECTION_TYPES, *_TLS_SECTIONS)
    }
    if "kill_switch_file" in doc:
        kwargs["kill_switch_file"] = _resolve(base_dir, doc["kill_switch_file"], "kill_switch_file")
    if "catalog" not in doc:
        raise ValueError("root config: 'catalog' is required")
    kwargs["catalog"] = _resolve(base_dir, doc["catalog"], "catalog")
    bundles = doc.get("bundles", {})
    if not isinstance(bundles, Mapping):
        raise ValueError(f"bundles must be a table of name = path, got {bundles!r}")
    kwargs["bundles"] = {name: _resolve(base_dir, path, f"bundles.{name}") for name, path in bundles.items()}
    parts_doc = doc.get("partitions", {})
    if not isinstance(parts_doc, Mapping):
        raise ValueError(f"partitions must be a table of tables, got {parts_doc!r}")
    partitions = {}
    for name, part in parts_doc.items():
        if not isinstance(part, Mapping):
            raise ValueError(f"partitions.{name} must be a table, got {part!r}")
        _reject_unknown(f"partitions.{name}", part, _PARTITION_KEYS)
        for key in _PARTITION_KEYS:
            if not isinstance(part.get(key, []), list):
                raise ValueError(f"partitions.{name}.{key} must be a list, got {part.get(key)!r}")
        partitions[name] = PartitionConfig(name, tuple(part.get("targets", [])), tuple(part.get("models", [])))
    kwargs["partitions"] = partitions
    if "feature_store" not in doc:
        raise ValueError("root config: section [feature_store] is required")
    for section, cls in _SECTION_TYPES.items():
        if section not in doc:
            continue
        sec = doc[section]
        if not isinstance(sec, Mapping):
            raise ValueError(f"[{section}] must be a table, got {sec!r}")
        _reject_unknown(f"[{section}]", sec, {f.name for f in fields(cls)})
        sec = dict(sec)
        if section == "feature_store" and "path" in sec:
            sec["path"] = _resolve(base_dir, sec["path"], "feature_store.path")
        try:
            kwargs[section] = cls(**sec)
        except TypeError as exc:
            raise ValueError(f"[{section}]: {exc}") from None
    for section in _TLS_SECTIONS:
        if section in doc:
            if not isinstance(doc[section], Mapping):
                raise ValueError(f"[{section}] must be a table, got {doc[section]!r}")
            kwargs[section] = TlsConfig.from_mapping(doc[section], section).resolve(base_dir)
    return RootConfig(**kwargs)


def load_root_config(path: str | Path) -> RootConfig:
    """Read and validate a root config TOML file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"root config {path}: {exc}") from None
    try:
        return root_config_from_dict(doc, path.resolve().parent)
    except ValueError as exc:
        raise ValueError(f"root config {path}: {exc}") from None
