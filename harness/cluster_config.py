"""The local cluster's description: what runs where (``cluster.json``), its TLS files, and
root-config overrides (``key=value`` TOML values). Pure data and functions."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from harness.processes import ClusterError
from transport.tls import TlsConfig

CLUSTER_FILE = "cluster.json"
SCHEMA_VERSION = 1
ROLES = ("production", "canary")


@dataclass(frozen=True, slots=True)
class LeafInfo:
    """One running leaf partition."""

    partition: str
    target: str
    metrics_url: str
    repo_dir: str
    models: tuple[str, ...]
    pid: int
    log: str
    replica: int = 0
    """Which of the partition's replicas (0-based); replicas share the repository."""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "models": list(self.models)}


TLS_FILES = {"ca_file": "ca.pem", "server_cert": "server.pem", "server_key": "server.key",
             "client_cert": "client.pem", "client_key": "client.key"}
"""``ClusterTls`` field -> file name in a ``--tls-dir`` (what ``tests/tls_certs.make_certs`` writes)."""


@dataclass(frozen=True, slots=True)
class ClusterTls:
    """Certificates of a mutual-TLS local cluster: one CA; every root and leaf serves with
    the server pair and requires a client certificate from the CA; roots (towards leaves)
    and tools present the client pair."""

    ca_file: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    @classmethod
    def from_dir(cls, directory: str | Path) -> "ClusterTls":
        """The five PEM files of ``directory`` by their conventional names (``TLS_FILES``)."""
        base = Path(directory).resolve()
        missing = [name for name in TLS_FILES.values() if not (base / name).is_file()]
        if missing:
            raise ClusterError(f"TLS directory {base} lacks {', '.join(missing)}")
        return cls(**{f: str(base / name) for f, name in TLS_FILES.items()})

    def server(self) -> TlsConfig:
        return TlsConfig(cert_file=self.server_cert, key_file=self.server_key, client_ca_file=self.ca_file)

    def client(self) -> TlsConfig:
        return TlsConfig(ca_file=self.ca_file, cert_file=self.client_cert, key_file=self.client_key)


def tls_json(tls: TlsConfig) -> dict[str, str]:
    """A client ``TlsConfig`` as cluster.json carries it (only the fields that are set)."""
    fields = ("ca_file", "cert_file", "key_file", "server_name")
    return {f: getattr(tls, f) for f in fields if getattr(tls, f)}


@dataclass(frozen=True, slots=True)
class RootInfo:
    """One running root."""

    target: str
    metrics_url: str
    config_dir: str
    config_file: str
    bundle_files: Mapping[str, str]
    pid: int
    log: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    """The root-config keys this root was started with beyond the generated defaults."""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "bundle_files": dict(self.bundle_files), "settings": dict(self.settings)}


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` (dotted keys for sections, e.g. ``cache.max_bytes=0``); the value is
    read as a TOML value, else taken as a bare string (``compression=none``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise ClusterError(f"root config override {text!r}: expected key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ClusterError(f"cannot write {value!r} to a root config")


def render_toml(doc: Mapping[str, Any]) -> str:
    """TOML text of a two-level document (top-level keys, tables, tables of tables)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in doc.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
        nested = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        if scalars or not nested:
            lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        for sub, subtable in nested.items():
            lines += ["", f"[{name}.{sub}]"] + [f"{k} = {_toml_value(v)}" for k, v in subtable.items()]
    return "\n".join(lines) + "\n"


def apply_overrides(doc: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with dotted-key overrides applied (the root validates the result)."""
    out = json.loads(json.dumps(doc))
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ClusterError(f"root config override {key!r}: {part!r} is not a table")
            node = child
        node[leaf] = value
    return out
