"""Tracing overhead in ``rootleaf bench``: ``--tracing off,0.01,1`` runs the modes once per
setting on the same leaves, pool and open-loop rate.

``off`` is the default configuration (no endpoint: no interceptor anywhere); a ratio R runs
the root with ``[tracing] endpoint = SINK, sample_ratio = R`` and every leaf restarted with
``--trace-endpoint SINK --trace-sample-ratio 0`` (leaves follow the root's sampling through
the traceparent it sends). SINK is an OTLP/gRPC receiver in a process of its own (the
collector protocol's ``TraceService`` from opentelemetry-proto) that counts spans and drops
them, so exporting costs what it costs against a real collector.

``python -m benchmarks.tracing_bench --port-file PATH [--count-file PATH]`` serves the sink on a
free loopback port until SIGTERM, then writes the number of spans it received;
``--hooks`` prints what the hooks of one request cost with tracing off (``timeit``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import timeit
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import grpc

from transport import tracing
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


async def _noop() -> None:
    return None


def _root_hooks() -> None:
    """The tracing hooks one request of the ci workload runs on a root (two fetches, two
    partition calls), less the coroutines that path creates anyway."""
    started = tracing.clock()
    tracing.record("validate", started)
    started = tracing.clock()
    tracing.record("resolve", started, {"attempt": 0, "models": 3})
    calls = [_noop() for _ in range(4)]
    tracing.traced(calls[0], "fetch", {"entity": "request"})
    tracing.traced(calls[1], "fetch", {"entity": "candidate"})
    tracing.annotate({"cache.hits": 1, "cache.misses": 0})
    tracing.annotate({"cache.hits": 1, "cache.misses": 0})
    started = tracing.clock()
    tracing.record("pack", started, {"partitions": 2, "raw_bytes": 1})
    tracing.traced(calls[2], "partition", {"partition": "a"})
    tracing.traced(calls[3], "partition", {"partition": "b"})
    started = tracing.clock()
    tracing.record("merge", started)
    for call in calls:
        call.close()


def _coroutines() -> None:
    for call in [_noop() for _ in range(4)]:
        call.close()


def _leaf_hooks() -> None:
    """The hooks of one leaf call (admit, decode, the batcher's capture and clocks, encode)."""
    started = tracing.clock()
    tracing.record("admit", started, {"models": 2})
    started = tracing.clock()
    tracing.record("decode", started, {"bytes": 1})
    tracing.capture()
    tracing.clock()
    tracing.clock()
    started = tracing.clock()
    tracing.record("encode", started)


def hooks_cost(repeat: int = 200_000) -> dict[str, float]:
    """Microseconds per request of the hooks with tracing off (this process's tracing)."""
    def per_call(fn: Any) -> float:
        return timeit.timeit(fn, number=repeat) / repeat * 1e6

    return {"root_us": per_call(_root_hooks) - per_call(_coroutines), "leaf_us": per_call(_leaf_hooks)}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracing_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port-file", type=Path, help="serve the sink, writing its port here")
    parser.add_argument("--count-file", type=Path, default=None)
    parser.add_argument("--hooks", action="store_true", help="print what the hooks cost per request with tracing off")
    args = parser.parse_args(argv)
    if args.hooks:
        cost = hooks_cost()
        print(f"tracing off: hooks of one ci root request {cost['root_us']:.1f} us, of one leaf call {cost['leaf_us']:.1f} us")
        return 0
    if args.port_file is None:
        parser.error("--port-file (serve the sink) or --hooks")
    die_with_parent_from_env()
    _serve(args.port_file, args.count_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
