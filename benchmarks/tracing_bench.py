"""Tracing overhead in ``rootleaf bench``: ``--tracing off,0.01,1`` runs the modes once per
setting on the same leaves, pool and open-loop rate.

``off`` is the default configuration (no endpoint: no interceptor anywhere); a ratio R runs
the root with ``[tracing] endpoint = SINK, sample_ratio = R`` and every leaf restarted with
``--trace-endpoint SINK --trace-sample-ratio 0`` (leaves follow the root's sampling through
the traceparent it sends). SINK is an OTLP/gRPC receiver in a process of its own (the
collector protocol's ``TraceService`` from opentelemetry-proto) that counts spans and drops
them, so exporting costs what it costs against a real collector.

``python -m benchmarks.tracing_bench --port-file PATH [--count-file PATH]`` serves the sink on a
free loopback port until SIGTERM, then writes the number of spans it received.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import grpc

from transport.parent_death import PARENT_PID_ENV, die_with_parent_from_env

__all__ = ["otlp_sink", "parse_tracing", "sink_spans", "tracing_variant"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SINK_START_S = 60.0


def parse_tracing(text: str) -> list[float | None]:
    """``off,0.01,1`` -> [None, 0.01, 1.0] (None = tracing off)."""
    out: list[float | None] = []
    for part in text.split(","):
        part = part.strip()
        if part == "off":
            out.append(None)
            continue
        try:
            ratio = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--tracing: expected off or a ratio in [0, 1], got {part!r}") from None
        if not 0.0 <= ratio <= 1.0:
            raise argparse.ArgumentTypeError(f"--tracing: a ratio must be in [0, 1], got {part!r}")
        out.append(ratio)
    return out


def tracing_variant(ratio: float | None, endpoint: str) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """(name, root overrides, extra leaf arguments) of one tracing setting."""
    if ratio is None:
        return "tracing=off", {"tracing.endpoint": ""}, ()
    return (
        f"tracing={ratio:g}",
        {"tracing.endpoint": endpoint, "tracing.sample_ratio": ratio},
        ("--trace-endpoint", endpoint, "--trace-sample-ratio", "0"),
    )


@contextmanager
def otlp_sink(workdir: Path) -> Iterator[str]:
    """A sink process for the run; yields its ``host:port``; stopped (by pid) on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "otlp-sink.port"
    port_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env[PARENT_PID_ENV] = str(os.getpid())  # the sink ends with the benchmark, whatever happens
    with open(workdir / "otlp-sink.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.tracing_bench", "--port-file", str(port_file),
             "--count-file", str(workdir / "otlp-sink.count")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT),
        )
    try:
        deadline = time.monotonic() + SINK_START_S
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"OTLP sink did not start (see {workdir / 'otlp-sink.log'})")
            time.sleep(0.05)
        yield f"127.0.0.1:{int(port_file.read_text())}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def sink_spans(workdir: Path) -> int:
    """Spans the sink of ``otlp_sink(workdir)`` received (read once it has stopped; -1 if unknown)."""
    try:
        return int((workdir / "otlp-sink.count").read_text())
    except (OSError, ValueError):
        return -1


def _serve(port_file: Path, count_file: Path | None) -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    lock = threading.Lock()
    received = [0]

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
            spans = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            with lock:
                received[0] += spans
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(2, thread_name_prefix="otlp-sink"))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    tmp = port_file.with_name(port_file.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, port_file)
    stop.wait()
    server.stop(grace=1).wait(5)
    if count_file is not None:
        count_file.write_text(f"{received[0]}\n")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracing_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--count-file", type=Path, default=None)
    args = parser.parse_args(argv)
    die_with_parent_from_env()
    _serve(args.port_file, args.count_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
