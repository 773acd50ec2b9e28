"""How the root reaches one leaf partition: the ``LeafClient`` interface and two variants.

``GrpcLeafClient`` keeps one ``grpc.aio`` channel per target (TLS when configured), sends
the pre-assembled request bytes as they are (identity request serializer), round-robins over
the targets that passed the last health check, and retries once on another target when a
call finds its target UNAVAILABLE and time remains. ``InProcessLeafClient`` hands the same bytes to an
async callable, so root logic is testable without sockets. Both raise ``LeafCallError``.
State is owned by the root's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Protocol, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.rootleaf.v1 import leaf_pb2
from transport.tls import PLAINTEXT, TlsConfig, aio_channel
from transport.server import GRPC_OPTIONS
from root.errors import LeafCallError

log = logging.getLogger(__name__)

LEAF_SCORE_METHOD = "/rootleaf.v1.Leaf/Score"
LEAF_SERVICE = "rootleaf.v1.Leaf"
# A restarted leaf is reconnected to within about a second: gRPC's default backoff grows to
# 120 s, which would keep a partition failing long after its leaf came back.
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class LeafClient(Protocol):
    """Sends serialised ``LeafRequest`` bytes to one partition."""

    async def score(self, payload: bytes, timeout_s: float) -> leaf_pb2.LeafResponse:
        """The leaf's response; raises ``LeafCallError`` (with the status code) on failure."""
        ...

    async def check_ready(self, timeout_s: float) -> int:
        """How many of the partition's targets are serving now."""
        ...

    async def close(self) -> None:
        """Close channels; pending calls are cancelled."""
        ...


def _error_of(exc: grpc.aio.AioRpcError) -> LeafCallError:
    code = exc.code()
    if code == grpc.StatusCode.CANCELLED:
        # Our own cancellation surfaces as asyncio.CancelledError, never as an RPC error: a
        # CANCELLED status means the leaf dropped the call (it is shutting down), so for the
        # client this partition is unavailable, not a call it cancelled.
        return LeafCallError(grpc.StatusCode.UNAVAILABLE, f"leaf cancelled the call: {exc.details() or 'CANCELLED'}")
    return LeafCallError(code, exc.details() or code.name)


class GrpcLeafClient:
    """Leaf partition reached over gRPC, round-robin over its targets."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        options: Sequence[tuple[str, object]] = (),
        tls: TlsConfig = PLAINTEXT,
    ) -> None:
        if not targets:
            raise ValueError("GrpcLeafClient needs at least one target")
        self.targets = tuple(targets)
        channel_options = [*GRPC_OPTIONS, ("grpc.lb_policy_name", "round_robin"), *RECONNECT_OPTIONS, *options]
        self._channels = [aio_channel(t, tls, channel_options) for t in self.targets]
        self._score = [
            ch.unary_unary(
                LEAF_SCORE_METHOD,
                request_serializer=None,  # the payload is already the serialised LeafRequest
                response_deserializer=leaf_pb2.LeafResponse.FromString,
            )
            for ch in self._channels
        ]
        self._health = [health_pb2_grpc.HealthStub(ch) for ch in self._channels]
        self._healthy = list(range(len(self.targets)))
        self._next = 0

    def _pick(self, exclude: int | None = None) -> int:
        pool = [i for i in self._healthy if i != exclude] or [
            i for i in range(len(self.targets)) if i != exclude
        ]
        index = pool[self._next % len(pool)]
        self._next += 1
        return index

    async def score(self, payload: bytes, timeout_s: float) -> leaf_pb2.LeafResponse:
        deadline = time.monotonic() + timeout_s
        index = self._pick()
        try:
            response: leaf_pb2.LeafResponse = await self._score[index](payload, timeout=timeout_s)
            return response
        except grpc.aio.AioRpcError as exc:
            error = _error_of(exc)
            remaining = deadline - time.monotonic()
            if exc.code() != grpc.StatusCode.UNAVAILABLE or len(self.targets) == 1 or remaining <= 0:
                raise error from None
        # One retry on another target: the first was unreachable, the request never ran there.
        if index in self._healthy:
            self._healthy.remove(index)
        index = self._pick(exclude=index)
        try:
            response = await self._score[index](payload, timeout=remaining)
            return response
        except grpc.aio.AioRpcError as exc:
            raise _error_of(exc) from None

    async def _check_one(self, index: int, timeout_s: float) -> bool:
        try:
            reply = await self._health[index].Check(
                health_pb2.HealthCheckRequest(service=LEAF_SERVICE), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def check_ready(self, timeout_s: float) -> int:
        results = await asyncio.gather(*(self._check_one(i, timeout_s) for i in range(len(self.targets))))
        self._healthy = [i for i, ok in enumerate(results) if ok]
        return len(self._healthy)

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels))


LeafHandler = Callable[[leaf_pb2.LeafRequest], Awaitable[leaf_pb2.LeafResponse]]


class InProcessLeafClient:
    """A partition served by an async callable in this process (same bytes as on the wire)."""

    def __init__(self, handler: LeafHandler) -> None:
        self._handler = handler
        self.received: int = 0
        """Requests handed to the handler."""

    async def score(self, payload: bytes, timeout_s: float) -> leaf_pb2.LeafResponse:
        request = leaf_pb2.LeafRequest.FromString(payload)
        self.received += 1
        try:
            return await asyncio.wait_for(self._handler(request), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            raise LeafCallError(grpc.StatusCode.DEADLINE_EXCEEDED, "in-process leaf deadline exceeded") from None

    async def check_ready(self, timeout_s: float) -> int:
        return 1

    async def close(self) -> None:
        return None
