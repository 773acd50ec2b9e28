"""``Leaf/ScorePartition``: every requested model of the partition in one call.

The request carries the union of the models' features once (a ``TensorPack``) and, per
model, its explicit version and the indexes of its inputs. The leaf reads the pack's table
once (every declared size checked before anything is decoded; a header seen before costs
a few numpy comparisons, ``wire.pack_reader.PackReader``), admits each model on its own
(``Converter.admit_pack``, remembered per layout; a model that is not hosted, not loaded at
that version, sent a bad input or whose queue is full gets its own error reply), decodes
each feature the admitted models use exactly once, hands every model views of its inputs,
and submits them to the batcher, which merges per model version as for ``Leaf/Score``. One
reply per model, in request order.

Runs on the server's event loop; a pack whose LZ4 payloads decode to more than
``OFFLOAD_DECODE_BYTES`` is decoded in the leaf's decode executor ("leaf-decode" threads,
the loop's default executor when none is given; LZ4 releases the GIL). The call's in-flight
bytes (``leaf.admission.Hold``) stay held until that decode and the batcher are done with
its inputs, even when the call ends first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar, cast

import grpc
import numpy as np
import torch
from google.protobuf.message import DecodeError

from leaf import metrics
from leaf.admission import Hold, InflightBytes
from leaf.batcher import Batcher, Outputs
from leaf.converter import ConvertedInputs, PackAdmitted
from leaf.pack_inputs import InputBuilder
from leaf.payload_views import DEFAULT_BOUNDS, DEFAULT_MAX_MODELS, FieldBounds, TooManyFields, split_partition
from leaf.errors import DeadlineExpired, InvalidRequest, LeafError, invalid_feature, to_status
from leaf.model import LoadedVersion
from leaf.repository import Repository
from protos.rootleaf.v1 import leaf_pb2
from wire import codec
from wire.codec import CodecError, DecodeLimits
from wire.pack_reader import PackReader, PackTable, decode_entry
from transport import tracing
from transport.status import abort, status_code

log = logging.getLogger(__name__)

# Metrics label for what a partition call receives as a whole (its wire and decoded bytes
# are counted once per call, not per model).
PARTITION_LABEL = "_partition"
# Above this many bytes of LZ4 payload to decompress, decoding leaves the event loop.
OFFLOAD_DECODE_BYTES = 1 << 20
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class WirePartition:
    """A parsed partition request with its serialised size; ``error`` is set when parsing failed."""

    size: int
    message: leaf_pb2.PartitionRequest
    error: str = ""
    data: bytes | memoryview | None = None
    """The pack's ``data`` as a view of the received bytes (``message.features.data`` is then
    empty); None when it was parsed into the message."""


def deserialize_partition(data: bytes, bounds: FieldBounds = DEFAULT_BOUNDS) -> WirePartition:
    """Parse a ``PartitionRequest`` whose field counts are within ``bounds`` (checked first,
    with work bounded by them), leaving the pack's payload bytes where gRPC put them (a
    large request is not copied again by the protobuf parser and the field read)."""
    try:
        split = split_partition(data, bounds)
    except TooManyFields as exc:
        return WirePartition(len(data), leaf_pb2.PartitionRequest(), f"PartitionRequest refused: {exc}")
    except (IndexError, ValueError):
        return WirePartition(len(data), leaf_pb2.PartitionRequest(), "malformed PartitionRequest: truncated or invalid field")
    try:
        if split is not None:
            small, payload = split
            message = leaf_pb2.PartitionRequest.FromString(small)
            if not message.features.data:  # a second data field would merge: parse it whole
                return WirePartition(len(data), message, data=payload)
        return WirePartition(len(data), leaf_pb2.PartitionRequest.FromString(data))
    except DecodeError as exc:
        return WirePartition(len(data), leaf_pb2.PartitionRequest(), f"malformed PartitionRequest: {exc}")


@dataclass(frozen=True, slots=True)
class _Ready:
    """A model of the call admitted on its inputs' headers, to be decoded and run."""

    name: str
    """As the request names it."""
    loaded: LoadedVersion
    admitted: PackAdmitted


@dataclass(frozen=True, slots=True)
class _Done:
    """A model's reply, with the ``model`` label its metrics take."""

    label: str
    reply: leaf_pb2.ModelReply


def _failed(name: str, loaded: LoadedVersion | None, exc: BaseException, request_id: str) -> _Done:
    """The error reply of the model ``name`` (``loaded`` once it resolved)."""
    status = to_status(exc)
    if not isinstance(exc, LeafError):  # a bug: model failures are logged by the batcher
        log.error("request %r to model %r failed", request_id, name, exc_info=exc)
    reply = leaf_pb2.ModelReply(
        model=name, version=loaded.version if loaded is not None else "",
        error_code=status.code.value[0], error_message=status.message,
    )
    return _Done(loaded.model if loaded is not None else metrics.UNKNOWN_MODEL_LABEL, reply)


def _decompress(table: PackTable, data: bytes | memoryview, indexes: Sequence[int]) -> dict[int, np.ndarray | CodecError]:
    """The LZ4 entries at ``indexes`` decompressed, each keyed by its index; a corrupt one is
    its error."""
    out: dict[int, np.ndarray | CodecError] = {}
    for index in indexes:
        try:
            out[index] = decode_entry(table.entry(index), data)
        except CodecError as exc:
            out[index] = exc
    return out


class PartitionScorer:
    """Serves ``ScorePartition`` over the leaf's repository, batcher and in-flight bound."""

    def __init__(
        self,
        repository: Repository,
        batcher: Batcher,
        inflight: InflightBytes,
        limits: DecodeLimits,
        executor: Executor | None = None,
        max_models: int = DEFAULT_MAX_MODELS,
    ) -> None:
        self._executor = executor
        self._max_models = max_models
        self._repository = repository
        self._batcher = batcher
        self._inflight = inflight
        self._reader = PackReader(limits)
        self._inputs = InputBuilder()

    async def score(self, wire: WirePartition, context: grpc.aio.ServicerContext) -> leaf_pb2.PartitionResponse:
        started = time.perf_counter()
        request = wire.message
        admitting = tracing.clock()
        try:
            table, models, data = self._admit(wire)
            tracing.record("admit", admitting, {"models": len(models)})
        except InvalidRequest as exc:  # the call as a whole is malformed
            metrics.REQUESTS.labels(PARTITION_LABEL, "", grpc.StatusCode.INVALID_ARGUMENT.name).inc()
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        ready = [m for m in models if isinstance(m, _Ready)]
        try:
            served = await self._run(request, table, data, ready, context, wire.size) if ready else []
        except asyncio.CancelledError:
            for m in ready:
                metrics.REQUESTS.labels(m.loaded.model, m.loaded.version, "CANCELLED").inc()
            raise
        elapsed = time.perf_counter() - started
        response = leaf_pb2.PartitionResponse()
        replies = iter(served)  # one per admitted model, in order
        for model in models:
            done = next(replies) if isinstance(model, _Ready) else model
            metrics.REQUESTS.labels(done.label, done.reply.version, status_code(done.reply.error_code).name).inc()
            metrics.REQUEST_SECONDS.labels(done.label).observe(elapsed)
            response.models.append(done.reply)
        return response

    def _admit(self, wire: WirePartition) -> tuple[PackTable, list[_Ready | _Done], bytes | memoryview]:
        """Read the pack's table and admit each model on headers alone."""
        if wire.error:
            raise InvalidRequest(wire.error)
        request = wire.message
        if not request.models:
            raise InvalidRequest("models must not be empty")
        if len(request.models) > self._max_models:
            raise InvalidRequest(f"{len(request.models)} models exceed max_models={self._max_models}")
        # Read once: each read of a bytes field is a new copy (and none when gRPC's bytes are viewed).
        data = wire.data if wire.data is not None else request.features.data
        try:
            table = self._reader.read(request.features, len(data))
        except CodecError as exc:
            raise invalid_feature(exc) from None
        metrics.RECEIVED_BYTES.labels(PARTITION_LABEL, "wire").inc(wire.size)
        n = request.num_candidates
        count = len(table)
        seen: set[str] = set()
        models: list[_Ready | _Done] = []
        for ref in request.models:
            loaded: LoadedVersion | None = None
            try:
                if ref.name in seen:
                    raise InvalidRequest(f"model {ref.name!r} requested twice")
                seen.add(ref.name)
                loaded = self._repository.resolve(ref.name, ref.version)
                indexes = ref.features
                if len(indexes) > count:  # names are unique: a model takes each entry once
                    raise InvalidRequest(f"{len(indexes)} feature indexes for a {count}-entry pack")
                if indexes and max(indexes) >= count:
                    raise InvalidRequest(f"feature index {max(indexes)} outside the {count}-entry pack")
                self._batcher.check_capacity(loaded)
                models.append(_Ready(ref.name, loaded, loaded.converter.admit_pack(table, indexes, n)))
            except LeafError as exc:
                models.append(_failed(ref.name, loaded, exc, request.request_id))
        return table, models, data

    async def _run(
        self,
        request: leaf_pb2.PartitionRequest,
        table: PackTable,
        data: bytes | memoryview,
        models: list[_Ready],
        context: grpc.aio.ServicerContext,
        size: int,
    ) -> list[_Done]:
        """Decode what the admitted models use once, submit each: their replies, in order."""
        # What the call holds: the received message (alive until the reply) and every
        # admitted model's inputs at N rows, until the call and the work it handed on end.
        cost = size + sum(m.admitted.cost.row_bytes for m in models)
        try:
            hold = self._inflight.acquire(cost)
        except LeafError as exc:
            return [_failed(m.name, m.loaded, exc, request.request_id) for m in models]
        try:
            return await self._decode_and_submit(request, table, data, models, context, hold)
        finally:
            hold.release()

    async def _decode_and_submit(
        self,
        request: leaf_pb2.PartitionRequest,
        table: PackTable,
        data: bytes | memoryview,
        models: list[_Ready],
        context: grpc.aio.ServicerContext,
        hold: Hold,
    ) -> list[_Done]:
        decoding = tracing.clock()
        sizes, encodings = table.layout.sizes, table.encodings
        if len(models) == 1:
            used: Sequence[int] = models[0].admitted.indexes
            decoded_bytes = models[0].admitted.cost.raw_bytes
        else:
            used = sorted({i for m in models for i in m.admitted.indexes})
            decoded_bytes = sum([sizes[i] for i in used])
        compressed = [i for i in used if encodings[i]]
        decompressed: dict[int, np.ndarray | CodecError] = {}
        if compressed:
            if sum(sizes[i] for i in compressed) > OFFLOAD_DECODE_BYTES:
                decompressed = await self._offload(hold, _decompress, table, data, compressed)
            else:
                decompressed = _decompress(table, data, compressed)
        n = request.num_candidates
        inputs = self._inputs.build(table, data, used, decompressed, n)
        failed = {i: error for i in compressed if isinstance(error := inputs[i], CodecError)}
        tracing.record("decode", decoding, {"bytes": decoded_bytes})
        metrics.RECEIVED_BYTES.labels(PARTITION_LABEL, "decoded").inc(decoded_bytes)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        done: dict[int, _Done] = {}
        waiting: list[tuple[int, asyncio.Future[Outputs]]] = []
        for slot, m in enumerate(models):
            try:
                if remaining is not None and remaining <= 0:
                    raise DeadlineExpired("deadline passed before the request was queued")
                indexes = m.admitted.indexes
                if failed and not failed.keys().isdisjoint(indexes):
                    raise invalid_feature(next(failed[i] for i in indexes if i in failed))
                tensors = cast(
                    dict[str, torch.Tensor], dict(zip(m.loaded.converter.input_names, [inputs[i] for i in indexes]))
                )
                cost = m.admitted.cost
                converted = ConvertedInputs(tensors, n, cost.raw_bytes, cost.layout)
                future = self._batcher.submit(m.loaded, converted, deadline, request.request_id, hold.release)
                hold.retain()
                waiting.append((slot, future))
            except LeafError as exc:
                done[slot] = _failed(m.name, m.loaded, exc, request.request_id)
        results = await asyncio.gather(*(future for _, future in waiting), return_exceptions=True)
        encoding = tracing.clock()
        for (slot, _), result in zip(waiting, results):
            m = models[slot]
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                done[slot] = _failed(m.name, m.loaded, result, request.request_id)
                continue
            reply = leaf_pb2.ModelReply(model=m.loaded.model, version=m.loaded.version)
            reply.outputs.extend(
                codec.encode(name, column, codec.Compression.NONE) for name, column in result.items()
            )
            done[slot] = _Done(m.loaded.model, reply)
        tracing.record("encode", encoding)
        return [done[slot] for slot in range(len(models))]

    async def _offload(self, hold: Hold, work: Callable[..., _T], *args: Any) -> _T:
        """``work(*args)`` in the decode executor. ``hold`` is kept until the work ends, even
        when this call is cancelled first: the work is shielded (it runs to its end, so its
        own ``finally`` is what lets go), since a thread cannot be stopped halfway."""
        loop = asyncio.get_running_loop()

        def run() -> _T:
            try:
                return work(*args)
            finally:
                _call_on(loop, hold.release)

        future = loop.run_in_executor(self._executor, run)
        hold.retain()  # before ``run`` can release it: that lands on this loop, later
        return await asyncio.shield(future)


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # the loop is closed: the server and its bound are gone
        pass

