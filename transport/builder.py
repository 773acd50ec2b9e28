"""One way to build a rootleaf gRPC server, used by the root and the leaf: message limits,
gRPC health, optional reflection, TLS, the Prometheus endpoint, and the port file a launcher
reads. Runs on the caller's thread before the server starts; nothing here serves requests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from transport.server import GRPC_OPTIONS, MAX_MESSAGE_BYTES
from transport.tls import TlsConfig, add_port

__all__ = ["BuiltServer", "build_server", "write_port_file"]


@dataclass(frozen=True, slots=True)
class BuiltServer:
    """A bound, not yet started server and the parts built with it."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    metrics_server: Any | None
    """The Prometheus HTTP server (None when metrics are off)."""

    def close_metrics(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()


def build_server(
    *,
    listen: str,
    tls: TlsConfig,
    services: Sequence[str],
    reflection_enabled: bool = True,
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
    reuse_port: bool = False,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    max_receive_message_bytes: int = MAX_MESSAGE_BYTES,
) -> BuiltServer:
    """Bind ``listen`` (TLS when configured) with health (and reflection of ``services``);
    start the metrics endpoint when ``metrics_port`` is set. Requests over
    ``max_receive_message_bytes`` (the role's limit) are refused by gRPC before any of ours
    runs. ``reuse_port``: share the port with other servers that set it (SO_REUSEPORT); off,
    a second server on a held port fails. Raises ``OSError`` when the port cannot be bound;
    nothing is left open then."""
    options: list[tuple[str, Any]] = [o for o in GRPC_OPTIONS if o[0] != "grpc.max_receive_message_length"]
    options.append(("grpc.max_receive_message_length", max_receive_message_bytes))
    # Stated either way: gRPC's default on Linux is on, and with it a second server (an old
    # process, a misconfigured copy) binds the same port and silently takes part of the traffic.
    options.append(("grpc.so_reuseport", 1 if reuse_port else 0))
    server = grpc.aio.server(options=options, interceptors=tuple(interceptors) or None)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection_enabled:
        reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = add_port(server, listen, tls)
    except RuntimeError:  # gRPC's "Failed to bind to address"
        port = 0
    if port == 0:
        raise OSError(f"cannot bind {listen}: in use by another process, or not an address of this host")
    metrics_server = None
    if metrics_port:
        metrics_server, _ = start_http_server(metrics_port, metrics_host)
    return BuiltServer(server, port, health_servicer, metrics_server)


def write_port_file(path: str | os.PathLike[str], port: int) -> None:
    """Publish the bound port atomically: a launcher polling the file never reads a partial
    number."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    os.replace(tmp, path)
