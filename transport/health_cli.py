"""``rootleaf health --target HOST:PORT [--service NAME]``: one gRPC health check, as an exit code.

A probe for places that run a command rather than speak gRPC themselves (a container
``HEALTHCHECK``, a Kubernetes ``exec`` probe on clusters without native gRPC probes),
using only what the rootleaf image holds. Exit 0 when the service reports SERVING, 1 when
it reports anything else or does not answer within ``--timeout-s``, 2 on bad arguments.
Runs on the main thread with a blocking channel.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from transport.tls import TlsConfig, sync_channel


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rootleaf health", description="gRPC health check of a root or leaf.")
    p.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT (default 127.0.0.1:50051)")
    p.add_argument("--service", default="", help="service name, e.g. rootleaf.v1.Root ('' = the server)")
    p.add_argument("--timeout-s", type=float, default=2.0, help="deadline of the check")
    p.add_argument("--tls-ca", default="", help="PEM CA bundle that verifies the server (turns TLS on)")
    p.add_argument("--tls-cert", default="", help="PEM client certificate for mutual TLS (with --tls-key)")
    p.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    p.add_argument("--tls-server-name", default="", help="name to verify in the server's certificate")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def check(target: str, service: str, timeout_s: float, tls: TlsConfig) -> str:
    """The reported status name (``SERVING``, ``NOT_SERVING``, ...) or the gRPC error code name."""
    with sync_channel(target, tls, []) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return code.name if code is not None else "ERROR"
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return name


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not args.timeout_s > 0:
        print(f"rootleaf health: --timeout-s must be > 0, got {args.timeout_s}", file=sys.stderr)
        return 2
    try:
        tls = TlsConfig(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key,
                        server_name=args.tls_server_name)
    except ValueError as exc:
        print(f"rootleaf health: {exc}", file=sys.stderr)
        return 2
    status = check(args.target, args.service, args.timeout_s, tls)
    if not args.quiet:
        print(f"{args.target} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1
