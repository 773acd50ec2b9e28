"""``rootleaf harness-leaf [--inject-delay-ms D] [--record-requests FILE] LEAF-FLAGS...``: a leaf
server process with the harness's interceptors installed (a slow replica, request records
for allowlist checks); every other flag is ``rootleaf leaf``'s."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import grpc

from harness.leaf_hooks import DelayInterceptor, RecordingInterceptor, RequestRecorder
from leaf.cli import build_parser, config_from_args
from leaf.server import serve
from transport.builder import write_port_file


def main(argv: list[str]) -> int:
    hooks = argparse.ArgumentParser(prog="rootleaf harness-leaf", add_help=False)
    hooks.add_argument("--inject-delay-ms", type=float, default=0.0,
                       help="fault injection: delay added before each scoring call reaches the leaf")
    hooks.add_argument("--record-requests", type=Path, default=None,
                       help="append one JSON line per model of each scoring call (what the leaf saw)")
    own, rest = hooks.parse_known_args(argv)
    parser = build_parser()
    args = parser.parse_args(rest)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if own.inject_delay_ms < 0:
        parser.error(f"--inject-delay-ms must be >= 0, got {own.inject_delay_ms}")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if own.inject_delay_ms:
        interceptors.append(DelayInterceptor(own.inject_delay_ms / 1000.0))
    recorder = None
    if own.record_requests is not None:
        recorder = RequestRecorder(open(own.record_requests, "a", encoding="utf-8"))
        interceptors.append(RecordingInterceptor([recorder]))
    port_file: Path | None = args.port_file

    def on_started(port: int) -> None:
        logging.getLogger("leaf").info("serving on %s:%d", config.host, port)
        if port_file is not None:
            write_port_file(port_file, port)

    try:
        serve(config, on_started, interceptors)
    finally:
        if recorder is not None:
            recorder.close()
    return 0
