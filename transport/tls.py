"""TLS and mutual TLS for every gRPC hop (client -> root, root -> leaf).

Configured by file paths. A server with ``client_ca_file`` set requires and verifies client
certificates (mutual TLS); a channel with ``cert_file``/``key_file`` presents one. A setting
the side it is given to would ignore is refused (``check_server``/``check_client``, called
by every config that holds a ``TlsConfig``), never dropped: a server given ``ca_file`` would
otherwise serve TLS and verify no client.
Files are read once when the server or channel is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import grpc

from transport import tracing

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

    def check_server(self, where: str = "tls") -> None:
        """Refuse what a server would ignore: it verifies clients only with ``client_ca_file``,
        so ``ca_file`` there (a client setting) would look like mutual TLS and serve without
        verifying anyone. Raises ``ValueError`` naming the field."""
        if self.ca_file:
            raise ValueError(
                f"{where}.ca_file is a client setting and a server ignores it (clients would go "
                f"unverified); set {where}.client_ca_file to require and verify client certificates"
            )
        if self.server_name:
            raise ValueError(f"{where}.server_name is a client setting; a server ignores it")
        if self.enabled and not self.cert_file:
            raise ValueError(f"{where}: a server needs cert_file and key_file to serve TLS")

    def check_client(self, where: str = "tls") -> None:
        """Refuse what a channel would ignore: ``client_ca_file`` verifies nothing on a
        client (``ca_file`` verifies the server). Raises ``ValueError`` naming the field."""
        if self.client_ca_file:
            raise ValueError(
                f"{where}.client_ca_file is a server setting and a channel ignores it; "
                f"set {where}.ca_file to verify the server"
            )

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
        self.check_server()
        pair = [(_read(self.key_file, "key_file"), _read(self.cert_file, "cert_file"))]
        if self.client_ca_file:
            return grpc.ssl_server_credentials(
                pair,
                root_certificates=_read(self.client_ca_file, "client_ca_file"),
                require_client_auth=True,
            )
        return grpc.ssl_server_credentials(pair)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        self.check_client()
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
    interceptors = tracing.client_interceptors() or None  # trace context on every call, when on
    if tls.enabled:
        return grpc.aio.secure_channel(
            target, tls.channel_credentials(), options=all_options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=all_options, interceptors=interceptors)


def sync_channel(target: str, tls: TlsConfig, options: list[tuple[str, Any]]) -> grpc.Channel:
    """A blocking channel to ``target``, secure when ``tls`` is configured."""
    all_options = [*options, *tls.channel_options()]
    if tls.enabled:
        return grpc.secure_channel(target, tls.channel_credentials(), options=all_options)
    return grpc.insecure_channel(target, options=all_options)
