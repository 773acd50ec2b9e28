"""Closed-loop load that accounts for every request: the soak's and fault tests' client.

It runs in its own process (``LoadProcess`` starts ``python -m harness.soak_load``):
the launcher forks leaves while load is in flight, and gRPC core cannot fork a process
whose other threads are inside gRPC calls (the child crashes before it execs).
``SoakLoad.run`` keeps ``concurrency`` workers sending Score requests (from a seeded
``RequestPool``, every model of the workload) to a root until ``stop`` is set, each call
with a deadline. Every request sent ends as exactly one ``Outcome``: the RPC's status and,
when it succeeded, each model's result code. A call that neither answers nor fails within
its deadline plus ``LOST_GRACE_S`` is counted as lost (the cluster must never produce one).
The child streams one JSON line per outcome to ``--out`` and a final
``{"done": true, "sent": .., "lost": ..}`` line after SIGTERM; the parent reads the file.
State belongs to the event loop that runs ``run``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Sequence

import grpc

from harness.load import RequestPool
from protos.rootleaf.v1 import root_pb2, root_pb2_grpc
from transport.server import GRPC_OPTIONS

LOST_GRACE_S = 5.0
"""A call still unanswered this long after its deadline is lost."""
_CODES = {code.value[0]: code.name for code in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request ended."""

    request_id: str
    started: float
    """``time.monotonic()`` at send."""
    elapsed_s: float
    code: str
    """The RPC's status code name ("OK" when the root answered)."""
    models: Mapping[str, str] = field(default_factory=dict)
    """Model -> its result code name (empty when the RPC failed)."""
    versions: Mapping[str, str] = field(default_factory=dict)
    """Model -> the version that served it."""

    @property
    def ok(self) -> bool:
        return self.code == "OK" and all(c == "OK" for c in self.models.values())


@dataclass(slots=True)
class LoadStats:
    """Totals over outcomes."""

    sent: int = 0
    succeeded: int = 0
    failed_by_code: Counter[str] = field(default_factory=Counter)
    """Failed requests by code: the RPC's code, else the first failing model's code."""
    model_results: Counter[str] = field(default_factory=Counter)
    """``model:code`` -> count, over requests the root answered."""
    lost: int = 0


class SoakLoad:
    """Closed-loop Score load that records one ``Outcome`` per request sent."""

    def __init__(
        self,
        target: str,
        pool: RequestPool,
        *,
        concurrency: int = 4,
        deadline_s: float = 1.0,
        models: Sequence[str] | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        rate: float = 0.0,
    ) -> None:
        self.target = target
        self.pool = pool
        self.concurrency = concurrency
        self.deadline_s = deadline_s
        self.models = tuple(models) if models is not None else None
        self.outcomes: list[Outcome] = []
        self.sent = 0
        self.lost = 0
        self._next = 0
        self._on_outcome = on_outcome
        self.rate = rate
        """Requests per second across workers (0 = as fast as answers come back); a fast
        failure then does not inflate the failure counts."""

    def _record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    def _request(self) -> root_pb2.ScoreRequest:
        base = self.pool.requests[self._next % len(self.pool)]
        request = root_pb2.ScoreRequest()
        request.CopyFrom(base)
        request.request_id = f"soak-{self._next}"
        if self.models is not None:
            del request.models[:]
            request.models.extend(root_pb2.ModelRef(name=m) for m in self.models)
        self._next += 1
        return request

    async def _one(self, stub: root_pb2_grpc.RootStub, request: root_pb2.ScoreRequest) -> None:
        started = time.monotonic()
        self.sent += 1
        try:
            response = await asyncio.wait_for(
                stub.Score(request, timeout=self.deadline_s), timeout=self.deadline_s + LOST_GRACE_S
            )
        except grpc.aio.AioRpcError as exc:
            self._record(Outcome(request.request_id, started, time.monotonic() - started, exc.code().name))
            return
        except TimeoutError:
            self.lost += 1
            return
        models = {r.model: _CODES.get(r.error_code, "UNKNOWN") for r in response.results}
        versions = {r.model: r.version for r in response.results}
        self._record(Outcome(request.request_id, started, time.monotonic() - started, "OK", models, versions))

    async def run(self, stop: asyncio.Event) -> None:
        """Send until ``stop`` is set; returns once every request sent has ended."""

        holder: dict[str, tuple[grpc.aio.Channel, root_pb2_grpc.RootStub]] = {}

        period = self.concurrency / self.rate if self.rate > 0 else 0.0

        async def worker() -> None:
            next_at = time.monotonic()
            while not stop.is_set():
                if self.target not in holder:
                    channel = grpc.aio.insecure_channel(self.target, options=GRPC_OPTIONS)
                    holder[self.target] = (channel, root_pb2_grpc.RootStub(channel))
                await self._one(holder[self.target][1], self._request())
                next_at += period
                if next_at > time.monotonic():
                    try:
                        await asyncio.wait_for(stop.wait(), next_at - time.monotonic())
                    except TimeoutError:
                        pass
                else:
                    next_at = time.monotonic()

        try:
            await asyncio.gather(
                *(asyncio.create_task(worker(), name=f"soak-load-{i}") for i in range(self.concurrency))
            )
        finally:
            for channel, _ in holder.values():
                await channel.close()



def load_stats(outcomes: Sequence[Outcome], sent: int, lost: int) -> LoadStats:
    """Totals over ``outcomes`` (``sent`` and ``lost`` as the load counted them)."""
    stats = LoadStats(sent=sent, lost=lost)
    for outcome in outcomes:
        for model, code in outcome.models.items():
            stats.model_results[f"{model}:{code}"] += 1
        if outcome.ok:
            stats.succeeded += 1
        elif outcome.code != "OK":
            stats.failed_by_code[outcome.code] += 1
        else:
            stats.failed_by_code[next(c for c in outcome.models.values() if c != "OK")] += 1
    return stats


class LoadProcess:
    """A ``SoakLoad`` in a child process; outcomes are read back from its JSON-lines file."""

    def __init__(
        self,
        target: str,
        out: Path,
        *,
        users: int,
        items: int,
        candidates: int,
        concurrency: int = 4,
        deadline_ms: int = 1000,
        models: Sequence[str] = (),
        seed: int = 0,
        rate: float = 0.0,
    ) -> None:
        self.out = out
        out.unlink(missing_ok=True)
        args = [
            sys.executable, "-m", "harness.soak_load", "--target", target, "--out", str(out),
            "--users", str(users), "--items", str(items), "--candidates", str(candidates),
            "--concurrency", str(concurrency), "--deadline-ms", str(deadline_ms), "--seed", str(seed),
            "--models", ",".join(models), "--rate", str(rate),
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")) if p)
        self._popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, env=env)
        self._offset = 0
        self._partial = b""
        self.outcomes: list[Outcome] = []
        self.summary: dict[str, Any] | None = None

    def poll(self) -> list[Outcome]:
        """Outcomes written since the last call (also appended to ``outcomes``)."""
        try:
            with open(self.out, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            doc = json.loads(line)
            if doc.get("done"):
                self.summary = doc
                continue
            new.append(Outcome(**doc))
        self.outcomes.extend(new)
        return new

    def wait_for(self, predicate: Callable[[Outcome], bool], timeout_s: float) -> Outcome | None:
        """The first new outcome satisfying ``predicate`` within ``timeout_s``, else None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for outcome in self.poll():
                if predicate(outcome):
                    return outcome
            if self._popen.poll() is not None:
                raise RuntimeError(f"load process exited with {self._popen.returncode}")
            time.sleep(0.02)  # polling the child's output file, bounded by the deadline
        return None

    def stop(self, timeout_s: float = 30.0) -> LoadStats:
        """SIGTERM the child, wait for it to drain, and return the totals."""
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
        try:
            self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait(timeout=timeout_s)
            raise RuntimeError("load process did not stop in time") from None
        self.poll()
        if self.summary is None:
            raise RuntimeError(f"load process exited with {self._popen.returncode} without a summary")
        return load_stats(self.outcomes, int(self.summary["sent"]), int(self.summary["lost"]))

    def __enter__(self) -> "LoadProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait(timeout=30)


async def _main(args: argparse.Namespace, stream: IO[str]) -> None:
    models = [m for m in args.models.split(",") if m]
    pool = RequestPool.build(models or ["_"], args.users, args.items, args.candidates, 512, args.seed)

    def write(outcome: Outcome) -> None:
        stream.write(json.dumps(asdict(outcome)) + "\n")
        stream.flush()

    load = SoakLoad(args.target, pool, concurrency=args.concurrency, deadline_s=args.deadline_ms / 1000,
                    on_outcome=write, rate=args.rate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await load.run(stop)
    stream.write(json.dumps({"done": True, "sent": load.sent, "lost": load.lost}) + "\n")
    stream.flush()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.soak_load", description="closed-loop Score load")
    p.add_argument("--target", required=True)
    p.add_argument("--out", type=Path, required=True, help="JSON lines, one per outcome")
    p.add_argument("--models", required=True, help="comma-separated models of every request")
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--candidates", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--deadline-ms", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.0, help="requests/s over all workers; 0 = closed loop")
    args = p.parse_args(argv)
    with open(args.out, "a", encoding="utf-8") as stream:
        asyncio.run(_main(args, stream))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
