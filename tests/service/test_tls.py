"""TLS and mutual TLS on a real aio gRPC server (health service) on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from transport.tls import PLAINTEXT, TlsConfig, add_port, aio_channel
from tests.tls_certs import CertFiles, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("certs"))


async def _check(server_tls: TlsConfig, client_tls: TlsConfig) -> grpc.StatusCode:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = add_port(server, "127.0.0.1:0", server_tls)
    await server.start()
    try:
        async with aio_channel(f"127.0.0.1:{port}", client_tls, []) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            return grpc.StatusCode.OK
    finally:
        await server.stop(None)


def _server(certs: CertFiles, mutual: bool) -> TlsConfig:
    return TlsConfig(
        cert_file=str(certs.server_cert),
        key_file=str(certs.server_key),
        client_ca_file=str(certs.ca) if mutual else "",
    )


def test_tls_with_trusted_ca_succeeds(certs: CertFiles) -> None:
    client = TlsConfig(ca_file=str(certs.ca), server_name="localhost")
    assert asyncio.run(_check(_server(certs, mutual=False), client)) == grpc.StatusCode.OK


def test_tls_with_untrusted_server_is_refused(certs: CertFiles) -> None:
    client = TlsConfig(ca_file=str(certs.other_ca), server_name="localhost")
    assert asyncio.run(_check(_server(certs, mutual=False), client)) == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_to_tls_server_is_refused(certs: CertFiles) -> None:
    assert asyncio.run(_check(_server(certs, mutual=False), PLAINTEXT)) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_accepts_valid_client_certificate(certs: CertFiles) -> None:
    client = TlsConfig(
        ca_file=str(certs.ca), cert_file=str(certs.client_cert), key_file=str(certs.client_key),
        server_name="localhost",
    )
    assert asyncio.run(_check(_server(certs, mutual=True), client)) == grpc.StatusCode.OK


@pytest.mark.parametrize("client_kind", ["no certificate", "certificate from another CA"])
def test_mutual_tls_refuses_client_without_valid_certificate(certs: CertFiles, client_kind: str) -> None:
    if client_kind == "no certificate":
        client = TlsConfig(ca_file=str(certs.ca), server_name="localhost")
    else:
        client = TlsConfig(
            ca_file=str(certs.ca), cert_file=str(certs.rogue_client_cert),
            key_file=str(certs.rogue_client_key), server_name="localhost",
        )
    assert asyncio.run(_check(_server(certs, mutual=True), client)) == grpc.StatusCode.UNAVAILABLE


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="together"):
        TlsConfig(cert_file="a.pem")
    with pytest.raises(ValueError, match="unknown keys"):
        TlsConfig.from_mapping({"cert": "x"})
    with pytest.raises(ValueError, match="cannot read"):
        TlsConfig(cert_file=str(tmp_path / "missing.pem"), key_file="k").server_credentials()
    assert TlsConfig.from_mapping({"ca_file": "ca.pem"}).resolve(tmp_path).ca_file == str(tmp_path / "ca.pem")
