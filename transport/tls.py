"""TLS and mutual TLS for every gRPC hop (client -> root, root -> leaf).

Configured by file paths. A server with ``client_ca_file`` set requires and verifies client
certificates (mutual TLS); a channel with ``cert_file``/``key_file`` presents one.
Files are read once when the server or channel is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import grpc

_FIELDS = ("cert_file", "key_file", "ca_file", "client_ca_file", "server_name")


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"tls.{field}: cannot read {path!r}: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Certificates for one endpoint; an empty config means plaintext."""

    cert_file: str = ""
    """PEM certificate chain this side presents (server: required; client: mTLS only)."""
    key_file: str = ""
    """PEM private key for ``cert_file``."""
    ca_file: str = ""
    """Client side: PEM roots that verify the server (empty = system roots)."""
    client_ca_file: str = ""
    """Server side: PEM roots that verify clients; set = clients must present a certificate."""
    server_name: str = ""
    """Client side: name to verify in the server certificate (overrides the target host)."""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("tls: cert_file and key_file must be set together")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, f) for f in _FIELDS)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "tls") -> "TlsConfig":
        unknown = set(raw) - set(_FIELDS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        for key, value in raw.items():
            if not isinstance(value, str):
                raise ValueError(f"{where}.{key} must be a string path, got {value!r}")
        return cls(**dict(raw))

    def resolve(self, base: Path) -> "TlsConfig":
        """Relative paths made absolute against ``base`` (the config file's directory)."""
        def fix(p: str) -> str:
            return str(base / p) if p and not Path(p).is_absolute() else p

        return TlsConfig(
            cert_file=fix(self.cert_file),
            key_file=fix(self.key_file),
            ca_file=fix(self.ca_file),
            client_ca_file=fix(self.client_ca_file),
            server_name=self.server_name,
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        if not self.cert_file:
            raise ValueError("tls: a server needs cert_file and key_file")
        pair = [(_read(self.key_file, "key_file"), _read(self.cert_file, "cert_file"))]
        if self.client_ca_file:
            return grpc.ssl_server_credentials(
                pair,
                root_certificates=_read(self.client_ca_file, "client_ca_file"),
                require_client_auth=True,
            )
        return grpc.ssl_server_credentials(pair)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "ca_file") if self.ca_file else None,
            private_key=_read(self.key_file, "key_file") if self.key_file else None,
            certificate_chain=_read(self.cert_file, "cert_file") if self.cert_file else None,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


PLAINTEXT = TlsConfig()


def add_port(server: grpc.aio.Server, address: str, tls: TlsConfig) -> int:
    """Bind ``address`` with TLS when configured; returns the bound port."""
    if tls.enabled:
        return server.add_secure_port(address, tls.server_credentials())
    return server.add_insecure_port(address)


def aio_channel(target: str, tls: TlsConfig, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
    """An asyncio channel to ``target``, secure when ``tls`` is configured."""
    all_options = [*options, *tls.channel_options()]
    if tls.enabled:
        return grpc.aio.secure_channel(target, tls.channel_credentials(), options=all_options)
    return grpc.aio.insecure_channel(target, options=all_options)


def sync_channel(target: str, tls: TlsConfig, options: list[tuple[str, Any]]) -> grpc.Channel:
    """A blocking channel to ``target``, secure when ``tls`` is configured."""
    all_options = [*options, *tls.channel_options()]
    if tls.enabled:
        return grpc.secure_channel(target, tls.channel_credentials(), options=all_options)
    return grpc.insecure_channel(target, options=all_options)
