"""``rootleaf leaf``: run a leaf partition server (flags map onto ``LeafConfig``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from leaf.config import LeafConfig, VersionPolicy
from leaf.server import serve
from transport.builder import write_port_file
from transport.tls import TlsConfig
from transport.tracing import TracingConfig


def build_parser() -> argparse.ArgumentParser:
    defaults = LeafConfig(repo=Path("."))
    p = argparse.ArgumentParser(prog="rootleaf leaf", description="Run a leaf partition server.")
    p.add_argument("--repo", type=Path, required=True, help="model repository <repo>/<model>/<version>/model.pt")
    p.add_argument("--host", default=defaults.host, help="bind address (default %(default)s)")
    p.add_argument("--port", type=int, default=defaults.port, help="gRPC port; 0 picks a free one")
    p.add_argument("--models", default=None, help="comma-separated models to host (default: all in the repo)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    p.add_argument("--versions", default="latest", help="latest | latest:N | all | 1,2,...")
    p.add_argument("--max-batch-candidates", type=int, default=defaults.max_batch_candidates,
                   help="most candidates merged into one forward; 0 disables merging")
    p.add_argument("--max-queue-delay-ms", type=float, default=defaults.max_queue_delay_ms)
    p.add_argument("--max-queue-requests", type=int, default=defaults.max_queue_requests)
    p.add_argument("--torch-threads", type=int, default=defaults.torch_threads, help="0 = torch default")
    p.add_argument("--metrics-port", type=int, default=defaults.metrics_port, help="0 = no metrics endpoint")
    p.add_argument("--metrics-host", default=defaults.metrics_host)
    p.add_argument("--recheck-interval-s", type=float, default=defaults.recheck_interval_s)
    p.add_argument("--max-candidates", type=int, default=defaults.max_candidates)
    p.add_argument("--max-inflight-bytes", type=int, default=defaults.max_inflight_bytes,
                   help="bytes of admitted requests at once; beyond: RESOURCE_EXHAUSTED before decoding")
    p.add_argument("--max-models", type=int, default=defaults.max_models,
                   help="most models in one ScorePartition call")
    p.add_argument("--max-receive-message-bytes", type=int, default=defaults.max_receive_message_bytes,
                   help="largest request accepted; 0 = sized from the decode limits (at most 256 MiB)")
    p.add_argument("--grace-s", type=float, default=defaults.grace_s, help="shutdown drain period")
    p.add_argument("--tls-cert", default="", help="PEM certificate chain: serve TLS (with --tls-key)")
    p.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", default="",
                   help="PEM CA bundle: require and verify client certificates (mutual TLS)")
    p.add_argument("--trace-endpoint", default="", help="OTLP/gRPC collector host:port; empty = no tracing")
    p.add_argument("--trace-sample-ratio", type=float, default=defaults.tracing.sample_ratio,
                   help="share of traces started here that are recorded (a caller's decision wins)")
    p.add_argument("--trace-service-name", default="", help="service.name of the spans (default rootleaf-leaf)")
    p.add_argument("--port-file", type=Path, default=None, help="write the bound port here once serving")
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> LeafConfig:
    models = None
    if args.models:
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    return LeafConfig(
        repo=args.repo,
        host=args.host,
        port=args.port,
        models=models,
        device=args.device,
        versions=VersionPolicy.parse(args.versions),
        max_batch_candidates=args.max_batch_candidates,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_requests=args.max_queue_requests,
        max_inflight_bytes=args.max_inflight_bytes,
        torch_threads=args.torch_threads,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        recheck_interval_s=args.recheck_interval_s,
        max_candidates=args.max_candidates,
        max_models=args.max_models,
        max_receive_message_bytes=args.max_receive_message_bytes,
        grace_s=args.grace_s,
        tls=TlsConfig(cert_file=args.tls_cert, key_file=args.tls_key, client_ca_file=args.tls_client_ca),
        tracing=TracingConfig(
            endpoint=args.trace_endpoint, sample_ratio=args.trace_sample_ratio, service_name=args.trace_service_name
        ),
    )


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    port_file: Path | None = args.port_file

    def on_started(port: int) -> None:
        logging.getLogger("leaf").info("serving on %s:%d", config.host, port)
        if port_file is not None:
            write_port_file(port_file, port)

    serve(config, on_started)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
