"""gRPC servicer for ``rootleaf.v1.Leaf``: protobuf <-> domain translation and the one
boundary where leaf errors become gRPC status codes.

Runs on the server's event loop. A request is admitted before any payload is decoded: queue
capacity first, then its inputs' declared sizes (``Converter.admit``), then the server-wide
bound on bytes in flight (``leaf.admission.InflightBytes``), held until it is answered.
Decoding and conversion happen on the loop (zero-copy views, cheap); the forward runs on the
batcher's inference thread.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from functools import partial
from dataclasses import dataclass, field
from typing import Mapping

import grpc
from google.protobuf.message import DecodeError

from leaf import metrics
from leaf.admission import InflightBytes
from leaf.batcher import Batcher
from leaf.errors import InvalidRequest
from leaf.model_call import CallOutcome, run_admitted
from leaf.partition import PartitionScorer, deserialize_partition
from leaf.payload_views import DEFAULT_BOUNDS, DEFAULT_MAX_MODELS, FieldBounds, TooManyFields, check_request, split_request
from leaf.repository import Repository
from wire import codec
from wire.codec import DEFAULT_LIMITS, DecodeLimits
from protos.rootleaf.v1 import leaf_pb2
from transport import tracing
from transport.status import abort


SERVICE_NAME = "rootleaf.v1.Leaf"


@dataclass(frozen=True, slots=True)
class WireRequest:
    """A parsed request with its serialised size; ``error`` is set when parsing failed."""

    size: int
    message: leaf_pb2.LeafRequest
    error: str = ""
    payloads: Mapping[int, memoryview] = field(default_factory=dict)
    """Payloads left in the received bytes, by position in ``message.features`` (whose
    ``data`` is then empty); see ``leaf.payload_views``."""


def deserialize_request(data: bytes, bounds: FieldBounds = DEFAULT_BOUNDS) -> WireRequest:
    """Parse a ``LeafRequest`` whose field count is within ``bounds`` (checked first, with
    work bounded by it); the payloads of its large tensors stay in ``data``."""
    try:
        check_request(data, bounds)
    except TooManyFields as exc:
        return WireRequest(len(data), leaf_pb2.LeafRequest(), f"LeafRequest refused: {exc}")
    except (IndexError, ValueError):
        return WireRequest(len(data), leaf_pb2.LeafRequest(), "malformed LeafRequest: truncated or invalid field")
    try:
        split = split_request(data)
        if split is not None:
            small, payloads = split
            return WireRequest(len(data), leaf_pb2.LeafRequest.FromString(small), payloads=payloads)
        return WireRequest(len(data), leaf_pb2.LeafRequest.FromString(data))
    except DecodeError as exc:
        return WireRequest(len(data), leaf_pb2.LeafRequest(), f"malformed LeafRequest: {exc}")


class LeafServicer:
    """Implements Score and ListModels over a repository and a batcher."""

    def __init__(
        self,
        repository: Repository,
        batcher: Batcher,
        *,
        inflight: InflightBytes,
        limits: DecodeLimits = DEFAULT_LIMITS,
        decode_executor: Executor | None = None,
        max_models: int = DEFAULT_MAX_MODELS,
    ) -> None:
        self._repository = repository
        self._batcher = batcher
        self._inflight = inflight
        self._bounds = FieldBounds.of(limits, max_models)
        self._partition = PartitionScorer(repository, batcher, inflight, limits, decode_executor, max_models)

    async def score(self, wire: WireRequest, context: grpc.aio.ServicerContext) -> leaf_pb2.LeafResponse:
        request = wire.message
        outcome = CallOutcome()
        try:
            admitting = tracing.clock()
            if wire.error:
                raise InvalidRequest(wire.error)
            loaded = self._repository.resolve(request.model, request.version)
            outcome.served(loaded)
            metrics.RECEIVED_BYTES.labels(loaded.model, "wire").inc(wire.size)
            self._batcher.check_capacity(loaded)
            admitted = loaded.converter.admit(request.features, request.num_candidates)
            tracing.record("admit", admitting)
            outputs = await run_admitted(
                loaded, admitted, lambda: wire.payloads, message_bytes=wire.size, request_id=request.request_id,
                context=context, inflight=self._inflight, batcher=self._batcher,
            )
            encoding = tracing.clock()
            response = leaf_pb2.LeafResponse(model=loaded.model, version=loaded.version)
            response.outputs.extend(
                codec.encode(name, column, codec.Compression.NONE) for name, column in outputs.items()
            )
            tracing.record("encode", encoding)
        except asyncio.CancelledError:
            outcome.cancelled()
            raise
        except Exception as exc:
            await outcome.fail(exc, context, f"request {request.request_id!r} to model {request.model!r}")
        outcome.finished()
        return response

    async def list_models(
        self, request: leaf_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> leaf_pb2.ListModelsResponse:
        response = leaf_pb2.ListModelsResponse()
        for name, slot in sorted(self._repository.slots().items()):
            info = response.models.add(name=name, versions=[v.version for v in slot.versions])
            latest = slot.latest
            if latest is not None:
                info.latest_version = latest.version
                info.input_names.extend(latest.signature.input_names)
                info.output_names.extend(latest.signature.output_names)
        return response

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Score": grpc.unary_unary_rpc_method_handler(
                    self.score,
                    request_deserializer=partial(deserialize_request, bounds=self._bounds),
                    response_serializer=leaf_pb2.LeafResponse.SerializeToString,
                ),
                "ScorePartition": grpc.unary_unary_rpc_method_handler(
                    self._partition.score,
                    request_deserializer=partial(deserialize_partition, bounds=self._bounds),
                    response_serializer=leaf_pb2.PartitionResponse.SerializeToString,
                ),
                "ListModels": grpc.unary_unary_rpc_method_handler(
                    self.list_models,
                    request_deserializer=leaf_pb2.ListModelsRequest.FromString,
                    response_serializer=leaf_pb2.ListModelsResponse.SerializeToString,
                ),
            },
        )
