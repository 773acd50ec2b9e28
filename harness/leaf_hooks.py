"""Fault injection and request recording for leaves, as gRPC server interceptors that the
harness installs (``harness.leaf_process``); the leaf's own code knows nothing of them.

``DelayInterceptor`` holds every Score and ScorePartition call for a fixed time before the
leaf sees it (a slow replica). ``RecordingInterceptor`` hands one ``ObservedRequest`` per
model of every call that reached the leaf, after it was answered, to its observers (tests,
or ``RequestRecorder`` writing JSON lines for the soak's allowlist check). Both run on the
server's event loop.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
import json
import logging
from dataclasses import asdict, dataclass
from typing import IO, Any, Awaitable, Callable, Sequence

import grpc

from leaf.partition import WirePartition
from leaf.servicer import SERVICE_NAME, WireRequest
from protos.rootleaf.v1 import leaf_pb2
from wire.codec import DEFAULT_LIMITS, CodecError
from wire.pack_reader import read_pack

__all__ = ["DelayInterceptor", "ObservedRequest", "RecordingInterceptor", "RequestRecorder"]

log = logging.getLogger(__name__)

SCORE = f"/{SERVICE_NAME}/Score"
SCORE_PARTITION = f"/{SERVICE_NAME}/ScorePartition"
Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ObservedRequest:
    """What a leaf saw of one model's request (a partition call gives one per model)."""

    request_id: str
    model: str
    version_requested: str
    version_served: str
    """The version that ran it; empty when it was refused or failed."""
    feature_names: tuple[str, ...]
    """Tensor names in the order received."""
    num_candidates: int
    wire_bytes: int
    """Size of the serialised call."""


class _ScoringInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the unary behaviours of Score and ScorePartition with ``_around``."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or method not in (SCORE, SCORE_PARTITION):
            return handler
        inner: Behavior = handler.unary_unary

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await self._around(method, inner, request, context)

        return handler._replace(unary_unary=behavior)

    @abstractmethod
    async def _around(self, method: str, inner: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Run ``inner`` for one scoring call, with what this interceptor adds around it."""


class DelayInterceptor(_ScoringInterceptor):
    """Every scoring call waits ``delay_s`` before the leaf sees it."""

    def __init__(self, delay_s: float) -> None:
        if delay_s < 0:
            raise ValueError(f"delay must be >= 0, got {delay_s!r}")
        self.delay_s = delay_s

    async def _around(self, method: str, inner: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await asyncio.sleep(self.delay_s)
        return await inner(request, context)


class RecordingInterceptor(_ScoringInterceptor):
    """Reports every scoring call to ``observers`` once it has been answered."""

    def __init__(self, observers: Sequence[Callable[[ObservedRequest], None]]) -> None:
        self.observers = tuple(observers)

    async def _around(self, method: str, inner: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = None
        try:
            response = await inner(request, context)
            return response
        finally:
            try:
                observed = observations(request, response)
            except Exception:  # an unparsable call is the leaf's to refuse, not ours to record
                observed = []
            for item in observed:
                for observer in self.observers:
                    try:
                        observer(item)
                    except Exception:  # an observer's bug must not fail the request
                        log.exception("request observer failed")


def observations(request: Any, response: Any) -> list[ObservedRequest]:
    """What a Score or ScorePartition call carried, per model, and which version served it
    (``response`` None: the call failed)."""
    if isinstance(request, WireRequest):
        message = request.message
        served = response.version if isinstance(response, leaf_pb2.LeafResponse) else ""
        return [ObservedRequest(
            message.request_id, message.model, message.version, served,
            tuple(t.name for t in message.features), message.num_candidates, request.size,
        )]
    if isinstance(request, WirePartition):
        call = request.message
        data_size = len(request.data) if request.data is not None else None
        try:
            names = [entry.name for entry in read_pack(call.features, DEFAULT_LIMITS, data_size)]
        except CodecError:
            names = []
        replies = list(response.models) if isinstance(response, leaf_pb2.PartitionResponse) else []
        out = []
        for i, ref in enumerate(call.models):
            reply = replies[i] if i < len(replies) else None
            served = reply.version if reply is not None and not reply.error_code else ""
            out.append(ObservedRequest(
                call.request_id, ref.name, ref.version, served,
                tuple(names[j] for j in ref.features if j < len(names)), call.num_candidates, request.size,
            ))
        return out
    return []


class RequestRecorder:
    """Appends ``ObservedRequest`` records as JSON lines (a small blocking write per request,
    on the loop: a testing aid, not meant for production load)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, observed: ObservedRequest) -> None:
        record = asdict(observed)
        record["feature_names"] = list(observed.feature_names)
        self._stream.write(json.dumps(record) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()
