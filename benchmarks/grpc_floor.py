"""The gRPC floor of the leaf benchmark: a server built like the leaf whose handlers answer
at once.

``Leaf/Score``, ``Leaf/ScorePartition`` and OIP's ``ModelInfer`` get the request as bytes (no parsing) and reply
with an empty message, and so does each message of ``rootleaf.bench.Floor/Stream``, a
bidirectional stream that is the cheapest way Python gRPC moves a request and its answer
(no call set-up per request); on the server the leaf uses (``transport.builder.build_server``: its
options, health and reflection) and its process set-up (``run_until_signalled``: allocator
tuning, ``gc.freeze``). What such a server's process spends per request is what gRPC costs
to receive the request and answer, whatever the leaf does: the leaf benchmark measures it
with the same payloads and client and reports the leaf's CPU above it.

``python -m benchmarks.grpc_floor --port-file PATH``: serves on a free loopback port until
SIGTERM. The handlers run on the server's event loop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import AsyncIterator

import grpc

from protos.rootleaf.v1 import leaf_pb2
from transport.builder import build_server, write_port_file
from transport.server import run_until_signalled
from transport.tls import TlsConfig
from wire.oip_service import OIP_SERVICE_NAME

SERVICE_NAME = leaf_pb2.DESCRIPTOR.services_by_name["Leaf"].full_name
METHODS = ("Score", "ScorePartition")
STREAM_SERVICE = "rootleaf.bench.Floor"
STREAM_METHOD = f"/{STREAM_SERVICE}/Stream"


async def _answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b""


async def _answer_each(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield b""


def create_server() -> tuple[grpc.aio.Server, int]:
    built = build_server(listen="127.0.0.1:0", tls=TlsConfig(), services=(SERVICE_NAME,))
    built.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE_NAME, {method: grpc.unary_unary_rpc_method_handler(_answer) for method in METHODS},
    ),))
    built.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        OIP_SERVICE_NAME, {"ModelInfer": grpc.unary_unary_rpc_method_handler(_answer)},
    ),))
    built.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        STREAM_SERVICE, {"Stream": grpc.stream_stream_rpc_method_handler(_answer_each)},
    ),))
    return built.server, built.port


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port-file", type=Path, required=True, help="write the bound port here once serving")
    args = parser.parse_args(argv)
    run_until_signalled(create_server, grace_s=1.0, on_started=lambda port: write_port_file(args.port_file, port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
