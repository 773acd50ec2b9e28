"""Client load for the cluster benchmark: a fixed request pool, open- and closed-loop drivers.

Requests come from a seeded pool (user, candidates, every model of the workload) cycled in
order, so every mode sees the same requests and per-request figures compare exactly. Load
runs on one ``grpc.aio`` channel in the calling thread's event loop; every phase is bounded
in request count and in time. Open-loop latency is measured from each request's scheduled
send time, so a server falling behind shows up in the percentiles (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import grpc
import numpy as np

from wire.codec import decode
from protos.rootleaf.v1 import root_pb2, root_pb2_grpc
from transport.server import GRPC_OPTIONS

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class RequestPool:
    """Pre-built Score requests, cycled in order by every phase."""

    requests: tuple[root_pb2.ScoreRequest, ...]
    models: tuple[str, ...]

    @classmethod
    def build(
        cls, models: Sequence[str], users: int, items: int, candidates: int, size: int, seed: int
    ) -> "RequestPool":
        rng = np.random.default_rng([seed, 0xB3])
        out = []
        for i in range(size):
            request = root_pb2.ScoreRequest(
                request_id=f"bench-{i}",
                user_id=int(rng.integers(0, users)),
                candidate_ids=rng.choice(items, size=candidates, replace=False).astype(np.uint64).tolist(),
                models=[root_pb2.ModelRef(name=m) for m in models],
            )
            out.append(request)
        return cls(tuple(out), tuple(models))

    def __len__(self) -> int:
        return len(self.requests)


@dataclass(slots=True)
class PhaseResult:
    """What one load phase observed."""

    sent: int = 0
    ok: int = 0
    rpc_errors: int = 0
    model_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.rpc_errors + self.model_errors

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else math.nan

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _record(result: PhaseResult, response: root_pb2.ScoreResponse | None, error: grpc.RpcError | None) -> None:
    if error is not None:
        result.rpc_errors += 1
        if len(result.error_samples) < 5:
            result.error_samples.append(f"{error.code().name}: {error.details()}")
        return
    assert response is not None
    bad = [r for r in response.results if r.error_code != 0]
    if bad:
        result.model_errors += 1
        if len(result.error_samples) < 5:
            result.error_samples.append(f"{bad[0].model}: code {bad[0].error_code} {bad[0].error_message}")
    else:
        result.ok += 1


class LoadClient:
    """One aio channel to a root; create and use it inside one event loop."""

    def __init__(self, target: str, timeout_s: float) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)
        self._stub = root_pb2_grpc.RootStub(self._channel)
        self.timeout_s = timeout_s

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, request: root_pb2.ScoreRequest) -> tuple[root_pb2.ScoreResponse | None, grpc.RpcError | None]:
        try:
            response = await self._stub.Score(request, timeout=self.timeout_s, wait_for_ready=True)
            return response, None
        except grpc.RpcError as exc:
            return None, exc

    async def closed_loop(
        self, pool: RequestPool, concurrency: int, duration_s: float, max_requests: int,
        progress: ProgressFn | None = None,
    ) -> PhaseResult:
        """``concurrency`` workers send back to back until ``duration_s`` or ``max_requests``."""
        result = PhaseResult()
        start = time.perf_counter()
        stop_at = start + duration_s
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while time.perf_counter() < stop_at and next_index < max_requests:
                index = next_index
                next_index += 1
                t0 = time.perf_counter()
                response, error = await self._call(pool.requests[index % len(pool)])
                result.latencies_ms.append((time.perf_counter() - t0) * 1e3)
                result.sent += 1
                _record(result, response, error)
                if progress:
                    elapsed = time.perf_counter() - start
                    progress(min(int(100 * elapsed / duration_s), 100), 100)

        await asyncio.gather(*(asyncio.create_task(worker(), name=f"closed-loop-{i}") for i in range(concurrency)))
        result.elapsed_s = time.perf_counter() - start
        return result

    async def open_loop(
        self, pool: RequestPool, rate: float, count: int, max_in_flight: int = 512,
        progress: ProgressFn | None = None,
    ) -> PhaseResult:
        """``count`` requests at a fixed ``rate`` (per second), whatever the responses do.
        Latency counts from the scheduled send time; beyond ``max_in_flight`` outstanding
        calls a request is counted as an error instead of being sent (bounded memory)."""
        result = PhaseResult()
        in_flight: set[asyncio.Task[None]] = set()
        start = time.perf_counter()

        async def one(request: root_pb2.ScoreRequest, scheduled: float) -> None:
            response, error = await self._call(request)
            result.latencies_ms.append((time.perf_counter() - scheduled) * 1e3)
            _record(result, response, error)
            if progress:
                progress(result.ok + result.errors, count)

        for i in range(count):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing of an open-loop generator, not synchronisation
            result.sent += 1
            if len(in_flight) >= max_in_flight:
                result.rpc_errors += 1
                continue
            task = asyncio.create_task(one(pool.requests[i % len(pool)], scheduled), name=f"open-loop-{i}")
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=self.timeout_s + 5.0)
        result.elapsed_s = time.perf_counter() - start
        return result

    async def scores(self, pool: RequestPool, count: int) -> dict[str, np.ndarray]:
        """Scores of the first ``count`` pool requests, one at a time (no batching with other
        traffic), keyed ``"<request index>/<model>/<output>"``."""
        out: dict[str, np.ndarray] = {}
        for i in range(min(count, len(pool))):
            response, error = await self._call(pool.requests[i])
            if error is not None or response is None:
                continue
            for result in response.results:
                for tensor in result.outputs:
                    out[f"{i}/{result.model}/{tensor.name}"] = np.array(decode(tensor))
        return out


class Progress:
    """A one-line stderr progress bar (no dependency). On a terminal it redraws in place;
    otherwise only the finished line is written. Silent when disabled."""

    def __init__(self, label: str, enabled: bool = True, width: int = 30) -> None:
        self.label = label
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.width = width
        self._last = -1
        self._done = 0
        self._total = 0

    def __call__(self, done: int, total: int) -> None:
        self._done, self._total = done, total
        if not self.tty or total <= 0:
            return
        filled = min(self.width, self.width * done // total)
        if filled == self._last and done < total:
            return
        self._last = filled
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\r  {self.label:<30} [{bar}] {done}/{total}")
        sys.stderr.flush()

    def done(self, note: str = "") -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write(f"  {note}\n")
        else:
            sys.stderr.write(f"  {self.label:<30} {note}\n")
        sys.stderr.flush()
        self._last = -1
