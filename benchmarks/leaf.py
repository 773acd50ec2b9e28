"""Leaf benchmark: requests/s, p50/p99 latency and leaf CPU against its floor (gRPC + forward).

Starts ``rootleaf leaf`` as a process and drives it from this process with pre-serialised
requests at several concurrencies, with batching on and off, through ``Leaf/Score`` (one
``Tensor`` message per feature), ``Leaf/ScorePartition`` (one ``TensorPack``) and the Open
Inference Protocol's ``ModelInfer`` (``raw_input_contents``, uncompressed), on two
cases: ``sparse``, a demo-size model with many inputs (default 150 inputs, hidden [256, 64],
N=256 candidates per request), and ``dense``, one [500, 3000] float32 input through an MLP
3000-512-256-2 (6 MB per request). It reads the leaf's process CPU (``/proc``) and forward
CPU (``rootleaf_leaf_forward_cpu_seconds_total``) to report the fraction of leaf CPU spent
outside the forward. The leaf runs with one torch thread, so the forward's CPU is the
inference thread's CPU.

The gRPC floor: per case, rpc and concurrency, the same payload and client drive a server
built like the leaf whose handlers answer at once (``benchmarks.grpc_floor``); its process
CPU per request is what gRPC alone costs, and the share of leaf CPU outside the forward and
above that floor is the leaf's own. The same server also answers each message of a
bidirectional stream at once (the same payload, one stream per client worker): the cheapest
way Python gRPC moves a request. ``floor share`` and ``stream share`` are the share of CPU
outside the forward that a leaf would have if it cost nothing but that floor besides this
forward: no leaf served by unary calls gets below the first, none on Python gRPC below the
second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Coroutine

import grpc
import numpy as np

from harness.demo_model import build_demo_model
from leaf.export import export_model
from wire import codec
from wire.pack_writer import PartitionModelRef, TensorPacker, assemble_partition_request
from contract.oip import DATATYPE_OF_DTYPE
from protos.inference import grpc_predict_v2_pb2 as oip_pb2
from protos.rootleaf.v1 import leaf_pb2
from wire.oip_service import OIP_SERVICE_NAME
from transport.server import GRPC_OPTIONS
from harness.processes import free_port
from benchmarks.cluster_metrics import cpu_seconds
from benchmarks.grpc_floor import STREAM_METHOD
from deploy.metrics_scrape import scrape

MODEL = "bench_demo"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class LeafResult:
    case: str
    rpc: str
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
    floor_cpu_ms: float = float("nan")
    """CPU per request of the gRPC floor server (same payload, client and concurrency)."""
    outside_above_floor: float = float("nan")
    """Fraction of the leaf's CPU outside the forward and above the gRPC floor (the leaf's own)."""
    stream_floor_cpu_ms: float = float("nan")
    """CPU per message of the floor server answering on a bidirectional stream (same payload)."""

    @property
    def forward_ms(self) -> float:
        return self.forward_cpu_s * 1000 / self.requests if self.requests else float("nan")

    @property
    def floor_factor(self) -> float:
        """Leaf CPU per request / (unary gRPC floor + forward): 1.0 is a leaf that costs
        nothing but the call and its model."""
        if not self.requests:
            return float("nan")
        return self.leaf_cpu_s * 1000 / self.requests / (self.floor_cpu_ms + self.forward_ms)

    @property
    def floor_share(self) -> float:
        """Share outside the forward of a leaf costing only the unary floor besides this forward."""
        return self.floor_cpu_ms / (self.floor_cpu_ms + self.forward_ms)

    @property
    def stream_floor_share(self) -> float:
        """The same with the stream floor: the least any leaf on Python gRPC spends outside."""
        return self.stream_floor_cpu_ms / (self.stream_floor_cpu_ms + self.forward_ms)


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


def build_arrays(spec: dict[str, tuple[int, bool, str]], n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, (width, request_level, kind) in spec.items():
        rows = 1 if request_level else n
        if kind == "int64":
            out[name] = rng.integers(0, 10**7, (rows, width), dtype=np.int64)
        else:
            out[name] = rng.standard_normal((rows, width), dtype=np.float32)
    return out


def build_request(arrays: dict[str, np.ndarray], n: int, rpc: str) -> bytes:
    """The serialised request of ``rpc`` (score | partition | oip), features LZ4 where it
    pays (OIP has no compression: raw binary tensors)."""
    if rpc == "oip":
        infer = oip_pb2.ModelInferRequest(model_name=MODEL, model_version="1", id="bench")
        for name, array in arrays.items():
            infer.inputs.add(name=name, datatype=DATATYPE_OF_DTYPE[array.dtype.name], shape=array.shape)
            infer.raw_input_contents.append(array.tobytes())
        return infer.SerializeToString()
    if rpc == "partition":  # as a root assembles it, in its order (root_pack_order)
        order = root_pack_order(arrays)
        batch = TensorPacker("lz4").pack_many(order, [arrays[name] for name in order])
        position = {name: i for i, name in enumerate(order)}
        model = PartitionModelRef(MODEL, "1", tuple(position[name] for name in arrays))
        return assemble_partition_request("bench", n, [model], batch)
    single = leaf_pb2.LeafRequest(request_id="bench", model=MODEL, version="1", num_candidates=n)
    single.features.extend(codec.encode(name, array) for name, array in arrays.items())
    return single.SerializeToString()


def root_pack_order(arrays: dict[str, np.ndarray]) -> list[str]:
    """The order a root packs features in: request-level ones (leading dim 1) first, each
    part grouped by dtype and shape as its feature cache returns them (first seen first)."""
    groups: dict[tuple[bool, str, tuple[int, ...]], list[str]] = {}
    for name, array in arrays.items():
        groups.setdefault((array.shape[0] != 1, array.dtype.str, array.shape[1:]), []).append(name)
    return [name for key in sorted(groups, key=lambda k: k[0]) for name in groups[key]]


METHODS = {
    "score": "/rootleaf.v1.Leaf/Score",
    "partition": "/rootleaf.v1.Leaf/ScorePartition",
    "oip": f"/{OIP_SERVICE_NAME}/ModelInfer",
}


def _failed(rpc: str, reply: bytes) -> bool:
    """Whether a reply carries a model error (a partition call reports them per model)."""
    if rpc != "partition":
        return False
    return any(m.error_code for m in leaf_pb2.PartitionResponse.FromString(reply).models)


def forward_figures(url: str) -> dict[str, float]:
    """The leaf's forward CPU and batch counters for ``MODEL``."""
    snap = scrape(url, timeout_s=10)
    return {
        "forward_cpu": snap.total("rootleaf_leaf_forward_cpu_seconds_total", model=MODEL),
        "batch_count": snap.total("rootleaf_leaf_batch_requests_count", model=MODEL),
        "batch_sum": snap.total("rootleaf_leaf_batch_requests_sum", model=MODEL),
    }


class ServerProcess:
    """A server started as ``python -m MODULE ARGS --port-file F``, serving once F exists."""

    def __init__(self, module: str, args: list[str], workdir: Path) -> None:
        port_file = workdir / f"port-{time.monotonic_ns()}"
        log_path = workdir / f"{module}.log"
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args, "--port-file", str(port_file)],
            cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{module} did not start; see {log_path}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


class LeafProcess(ServerProcess):
    def __init__(self, repo: Path, workdir: Path, extra: list[str]) -> None:
        self.metrics_port = free_port()
        super().__init__("leaf.cli", [
            "--repo", str(repo), "--port", "0", "--metrics-port", str(self.metrics_port), "--torch-threads", "1",
            "--log-level", "WARNING", *extra,
        ], workdir)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@dataclass(frozen=True, slots=True)
class FloorCost:
    """CPU seconds per request of the gRPC floor server: unary call, stream message."""

    unary_s: float
    stream_s: float


def measure_floor(
    workdir: Path, payloads: dict[str, bytes], concurrencies: list[int], duration: float
) -> dict[tuple[str, int], FloorCost]:
    """CPU per request of the gRPC floor server, per (rpc, concurrency)."""
    server = ServerProcess("benchmarks.grpc_floor", [], workdir)
    out: dict[tuple[str, int], FloorCost] = {}

    def per_request(driver: Callable[[float], Coroutine[Any, Any, tuple[list[float], int]]], what: str) -> float:
        asyncio.run(driver(min(duration, 0.5)))  # warm-up
        before = cpu_seconds(server.proc.pid)
        latencies, errors = asyncio.run(driver(duration))
        cpu = cpu_seconds(server.proc.pid) - before
        if errors or not latencies:
            raise RuntimeError(f"gRPC floor server failed {errors} {what}")
        return cpu / len(latencies)

    try:
        for rpc, payload in payloads.items():
            for c in concurrencies:
                out[rpc, c] = FloorCost(
                    per_request(lambda d: drive(server.port, payload, c, d, rpc), f"{rpc} calls"),
                    per_request(lambda d: drive_stream(server.port, payload, c, d), "stream messages"),
                )
    finally:
        server.stop()
    return out


async def drive_stream(port: int, payload: bytes, concurrency: int, duration: float) -> tuple[list[float], int]:
    """``concurrency`` bidirectional streams to the floor server, each sending ``payload`` and
    awaiting its answer in turn until ``duration`` is over."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
        open_stream = channel.stream_stream(STREAM_METHOD)
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            call = open_stream(wait_for_ready=True, timeout=duration + 30)
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await call.write(payload)
                await call.read()
                latencies.append(time.perf_counter() - started)
            await call.done_writing()
            if await call.code() != grpc.StatusCode.OK:
                raise RuntimeError(f"gRPC floor stream ended {await call.code()}: {await call.details()}")

        await asyncio.gather(*(asyncio.create_task(worker(), name=f"stream-{i}") for i in range(concurrency)))
    return latencies, 0


async def drive(
    port: int, payload: bytes, concurrency: int, duration: float, rpc: str = "score"
) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
        call = channel.unary_unary(METHODS[rpc])
        await call(payload, wait_for_ready=True, timeout=30)  # warm-up
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    reply = await call(payload, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if _failed(rpc, reply):
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(asyncio.create_task(worker(), name=f"bench-{i}") for i in range(concurrency)))
    return latencies, errors


def run_mode(
    repo: Path, workdir: Path, case: str, label: str, flags: list[str], payloads: dict[str, bytes], n: int,
    concurrencies: list[int], duration: float, floors: dict[tuple[str, int], FloorCost],
) -> list[LeafResult]:
    """One leaf process per (case, batching mode); each rpc and concurrency measured on it."""
    leaf = LeafProcess(repo, workdir, flags)
    results = []
    try:
        for rpc, payload in payloads.items():
            for concurrency in concurrencies:
                asyncio.run(drive(leaf.port, payload, concurrency, min(duration, 1.0), rpc))  # warm-up
                before_cpu, before = cpu_seconds(leaf.proc.pid), forward_figures(leaf.metrics_url)
                started = time.perf_counter()
                latencies, errors = asyncio.run(drive(leaf.port, payload, concurrency, duration, rpc))
                elapsed = time.perf_counter() - started
                cpu, after = cpu_seconds(leaf.proc.pid) - before_cpu, forward_figures(leaf.metrics_url)
                forward = after["forward_cpu"] - before["forward_cpu"]
                forwards = after["batch_count"] - before["batch_count"]
                lat = np.asarray(latencies) * 1000
                cost = floors.get((rpc, concurrency), FloorCost(float("nan"), float("nan")))
                floor = cost.unary_s * len(latencies)
                results.append(LeafResult(
                    case=case, rpc=rpc, batching=label, concurrency=concurrency, requests=len(latencies),
                    errors=errors, requests_per_s=len(latencies) / elapsed,
                    candidates_per_s=len(latencies) * n / elapsed,
                    p50_ms=float(np.percentile(lat, 50)) if lat.size else float("nan"),
                    p99_ms=float(np.percentile(lat, 99)) if lat.size else float("nan"),
                    mean_batch_requests=(after["batch_sum"] - before["batch_sum"]) / forwards if forwards else 0.0,
                    leaf_cpu_s=cpu, forward_cpu_s=forward, outside_forward=1 - forward / cpu if cpu else float("nan"),
                    floor_cpu_ms=floor * 1000 / len(latencies) if latencies else float("nan"),
                    outside_above_floor=(cpu - forward - floor) / cpu if cpu else float("nan"),
                    stream_floor_cpu_ms=cost.stream_s * 1000,
                ))
    finally:
        leaf.stop()
    return results


def print_table(results: list[LeafResult]) -> None:
    header = (f"{'case':<7}{'rpc':<10}{'batching':<9}{'conc':>5}{'req/s':>9}{'cand/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'req/fwd':>8}{'cpu ms/req':>11}{'fwd ms/req':>11}{'outside fwd':>12}{'grpc ms/req':>12}"
              f"{'above grpc':>11}{'x floor':>8}{'floor share':>12}{'stream ms':>10}{'stream share':>13}{'err':>5}")
    print(header)
    print("-" * len(header))
    for r in results:
        per = 1000 / r.requests if r.requests else float("nan")
        print(f"{r.case:<7}{r.rpc:<10}{r.batching:<9}{r.concurrency:>5}{r.requests_per_s:>9.1f}{r.candidates_per_s:>10.0f}"
              f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.mean_batch_requests:>8.2f}{r.leaf_cpu_s * per:>11.2f}"
              f"{r.forward_cpu_s * per:>11.2f}{r.outside_forward:>11.1%}{r.floor_cpu_ms:>12.2f}"
              f"{r.outside_above_floor:>11.1%}{r.floor_factor:>8.2f}{r.floor_share:>12.1%}{r.stream_floor_cpu_ms:>10.2f}"
              f"{r.stream_floor_share:>13.1%}{r.errors:>5}")
    print("outside fwd: share of leaf CPU outside the forward; grpc ms/req: CPU per request of a server built like"
          " the leaf that answers at once (gRPC's floor, same payload and client); above grpc: the share of leaf"
          " CPU outside the forward left after subtracting that floor; x floor: leaf CPU per request / (grpc ms/req +"
          " fwd ms/req), 1.00 being a leaf that costs only its call and its forward; floor share: the share outside the forward"
          " of a leaf that cost only that floor besides this forward; stream ms/req and stream share: the same"
          " for one message each way on an open bidirectional stream, the least Python gRPC costs per request")


@dataclass(frozen=True, slots=True)
class Case:
    """A model and its request arrays."""

    name: str
    widths: dict[str, int]
    hidden: list[int]
    outputs: list[str]
    arrays: dict[str, np.ndarray]
    n: int


def sparse_case(inputs: int, hidden: list[int], n: int) -> Case:
    spec = workload(inputs, seed=0)
    return Case("sparse", {k: w for k, (w, _, _) in spec.items()}, hidden, ["ctr"], build_arrays(spec, n, seed=2), n)


def dense_case(rows: int = 500, width: int = 3000) -> Case:
    x = np.random.default_rng(3).standard_normal((rows, width), dtype=np.float32)
    return Case("dense", {"x": width}, [512, 256], ["o1", "o2"], {"x": x}, rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rootleaf bench leaf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="sparse,dense", help="sparse (many inputs) and/or dense (one big input)")
    parser.add_argument("--rpcs", default="score,partition,oip",
                        help="any of score (Leaf/Score), partition (Leaf/ScorePartition), oip (ModelInfer)")
    parser.add_argument("--inputs", type=int, default=150, help="sparse case: model inputs (default %(default)s)")
    parser.add_argument("--hidden", default="256,64", help="sparse case: hidden sizes")
    parser.add_argument("--candidates", type=int, default=256, help="sparse case: N per request")
    parser.add_argument("--dense-shape", default="500,3000", help="dense case: rows,width of its one input")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrencies")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--queue-delay-ms", type=float, default=1.0, help="max queue delay with batching on")
    parser.add_argument("--modes", default="on,off", help="batching modes to run: on,off")
    parser.add_argument("--floor-duration", type=float, default=2.0,
                        help="seconds per gRPC floor measurement (0: no floor)")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the leaf runs its models (cuda: benchmarks/cuda_leaf.sh)")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    modes = {
        "on": ["--device", args.device, "--max-batch-candidates", "4096", "--max-queue-delay-ms", str(args.queue_delay_ms)],
        "off": ["--device", args.device, "--max-batch-candidates", "0"],
    }
    builders = {
        "sparse": lambda: sparse_case(args.inputs, [int(h) for h in args.hidden.split(",")], args.candidates),
        "dense": lambda: dense_case(*(int(v) for v in args.dense_shape.split(","))),
    }
    rpcs = args.rpcs.split(",")
    results: list[LeafResult] = []
    with tempfile.TemporaryDirectory(prefix="rootleaf-bench-leaf-") as tmp:
        workdir = Path(tmp)
        for name in args.cases.split(","):
            case = builders[name]()
            repo = workdir / name
            module = build_demo_model(case.widths, case.hidden, case.outputs, seed=1)
            export_model(module, repo / MODEL / "1", list(case.widths), case.outputs)
            payloads = {rpc: build_request(case.arrays, case.n, rpc) for rpc in rpcs}
            print(f"{name}: {len(case.widths)} inputs, hidden {case.hidden}, N={case.n}, request "
                  + ", ".join(f"{rpc} {len(p) / 1e3:,.0f} KB" for rpc, p in payloads.items())
                  + f"; leaf: 1 torch thread, {args.device}")
            floors = measure_floor(workdir, payloads, concurrencies, args.floor_duration) if args.floor_duration > 0 else {}
            for mode in args.modes.split(","):
                results += run_mode(repo, workdir, name, mode, modes[mode], payloads, case.n, concurrencies,
                                    args.duration, floors)
    print_table(results)
    if args.json is not None:
        args.json.write_text(json.dumps([
            asdict(r) | {"floor_factor": r.floor_factor, "floor_share": r.floor_share, "stream_floor_share": r.stream_floor_share} for r in results
        ], indent=1))
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
