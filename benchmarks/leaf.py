"""Leaf benchmark: requests/s, p50/p99 latency and CPU outside the model's forward.

Starts ``rootleaf leaf`` as a process on a generated demo-size model (default 150 inputs,
hidden [256, 64], N=256 candidates per request), drives it from this process with
pre-serialised requests at several concurrencies, with batching on and off, and reads the
leaf's process CPU (``/proc``) and forward CPU (``rootleaf_leaf_forward_cpu_seconds_total``)
to report the fraction of leaf CPU spent outside the forward. The leaf runs with one torch
thread, so the forward's CPU is the inference thread's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from leaf.demo_model import build_demo_model
from leaf.export import export_model
from wire import codec
from protos.rootleaf.v1 import leaf_pb2

MODEL = "bench_demo"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class LeafResult:
    batching: str
    concurrency: int
    requests: int
    errors: int
    requests_per_s: float
    candidates_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch_requests: float
    leaf_cpu_s: float
    forward_cpu_s: float
    outside_forward: float
    """Fraction of the leaf process's CPU spent outside the model's forward."""


def workload(inputs: int, seed: int) -> dict[str, tuple[int, bool, str]]:
    """name -> (width, request_level, kind): a mix of scalars, embeddings and id lists."""
    out: dict[str, tuple[int, bool, str]] = {}
    for i in range(inputs):
        if i % 10 == 0:
            out[f"user_f{i}"] = (8, True, "float32")
        elif i % 10 == 1:
            out[f"item_emb{i}"] = (16, False, "float32")
        elif i % 10 == 2:
            out[f"item_ids{i}"] = (8, False, "int64")
        else:
            out[f"item_f{i}"] = (1, False, "float32")
    return out


def build_request(spec: dict[str, tuple[int, bool, str]], n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    request = leaf_pb2.LeafRequest(request_id="bench", model=MODEL, num_candidates=n)
    for name, (width, request_level, kind) in spec.items():
        rows = 1 if request_level else n
        array: np.ndarray
        if kind == "int64":
            array = rng.integers(0, 10**7, (rows, width), dtype=np.int64)
        else:
            array = rng.standard_normal((rows, width), dtype=np.float32)
        request.features.append(codec.encode(name, array))
    return request.SerializeToString()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as page:
        text = page.read().decode()
    wanted = {
        "forward_cpu": rf'rootleaf_leaf_forward_cpu_seconds_total{{model="{MODEL}"}} (\S+)',
        "batch_count": rf'rootleaf_leaf_batch_requests_count{{model="{MODEL}"}} (\S+)',
        "batch_sum": rf'rootleaf_leaf_batch_requests_sum{{model="{MODEL}"}} (\S+)',
    }
    out = {}
    for key, pattern in wanted.items():
        match = re.search(pattern, text)
        out[key] = float(match.group(1)) if match else 0.0
    return out


class LeafProcess:
    def __init__(self, repo: Path, workdir: Path, extra: list[str]) -> None:
        self.metrics_port = free_port()
        port_file = workdir / f"port-{time.monotonic_ns()}"
        self.log = open(workdir / "leaf.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leaf.cli", "--repo", str(repo), "--port", "0", "--port-file", str(port_file),
             "--metrics-port", str(self.metrics_port), "--torch-threads", "1", "--log-level", "WARNING", *extra],
            cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"leaf did not start; see {workdir / 'leaf.log'}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


async def drive(port: int, payload: bytes, concurrency: int, duration: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/rootleaf.v1.Leaf/Score")
        await call(payload, wait_for_ready=True, timeout=30)  # warm-up
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    await call(payload, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(asyncio.create_task(worker(), name=f"bench-{i}") for i in range(concurrency)))
    return latencies, errors


def run_mode(
    repo: Path, workdir: Path, label: str, flags: list[str], payload: bytes, n: int,
    concurrencies: list[int], duration: float,
) -> list[LeafResult]:
    leaf = LeafProcess(repo, workdir, flags)
    results = []
    try:
        for concurrency in concurrencies:
            asyncio.run(drive(leaf.port, payload, concurrency, min(duration, 1.0)))  # warm-up
            before_cpu, before = process_cpu(leaf.proc.pid), scrape(leaf.metrics_url)
            started = time.perf_counter()
            latencies, errors = asyncio.run(drive(leaf.port, payload, concurrency, duration))
            elapsed = time.perf_counter() - started
            cpu, after = process_cpu(leaf.proc.pid) - before_cpu, scrape(leaf.metrics_url)
            forward = after["forward_cpu"] - before["forward_cpu"]
            forwards = after["batch_count"] - before["batch_count"]
            lat = np.asarray(latencies) * 1000
            results.append(LeafResult(
                batching=label, concurrency=concurrency, requests=len(latencies), errors=errors,
                requests_per_s=len(latencies) / elapsed, candidates_per_s=len(latencies) * n / elapsed,
                p50_ms=float(np.percentile(lat, 50)) if lat.size else float("nan"),
                p99_ms=float(np.percentile(lat, 99)) if lat.size else float("nan"),
                mean_batch_requests=(after["batch_sum"] - before["batch_sum"]) / forwards if forwards else 0.0,
                leaf_cpu_s=cpu, forward_cpu_s=forward, outside_forward=1 - forward / cpu if cpu else float("nan"),
            ))
    finally:
        leaf.stop()
    return results


def print_table(results: list[LeafResult]) -> None:
    header = f"{'batching':<10}{'conc':>5}{'req/s':>9}{'cand/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'req/fwd':>9}{'cpu s':>8}{'fwd s':>8}{'outside fwd':>13}{'err':>5}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.batching:<10}{r.concurrency:>5}{r.requests_per_s:>9.1f}{r.candidates_per_s:>10.0f}{r.p50_ms:>9.2f}"
              f"{r.p99_ms:>9.2f}{r.mean_batch_requests:>9.2f}{r.leaf_cpu_s:>8.2f}{r.forward_cpu_s:>8.2f}"
              f"{r.outside_forward:>12.1%}{r.errors:>5}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rootleaf bench leaf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=150, help="model inputs (default %(default)s)")
    parser.add_argument("--hidden", default="256,64")
    parser.add_argument("--candidates", type=int, default=256, help="N per request")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrencies")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--queue-delay-ms", type=float, default=1.0, help="max queue delay with batching on")
    parser.add_argument("--modes", default="on,off", help="batching modes to run: on,off")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args(argv)
    spec = workload(args.inputs, seed=0)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    modes = {
        "on": ["--max-batch-candidates", "4096", "--max-queue-delay-ms", str(args.queue_delay_ms)],
        "off": ["--max-batch-candidates", "0"],
    }
    with tempfile.TemporaryDirectory(prefix="rootleaf-bench-leaf-") as tmp:
        workdir = Path(tmp)
        repo = workdir / "repo"
        module = build_demo_model({k: w for k, (w, _, _) in spec.items()}, [int(h) for h in args.hidden.split(",")], ["ctr"], seed=1)
        export_model(module, repo / MODEL / "1", list(spec), ["ctr"])
        payload = build_request(spec, args.candidates, seed=2)
        print(f"model: {args.inputs} inputs, hidden [{args.hidden}], N={args.candidates}, "
              f"request {len(payload) / 1e3:.0f} KB; leaf: 1 torch thread, cpu")
        results: list[LeafResult] = []
        for mode in args.modes.split(","):
            results += run_mode(repo, workdir, mode, modes[mode], payload, args.candidates, concurrencies, args.duration)
    print_table(results)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
