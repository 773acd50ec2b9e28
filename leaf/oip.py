"""The leaf's Open Inference Protocol face: ``inference.GRPCInferenceService`` beside
``rootleaf.v1.Leaf`` on the same port.

``ModelInfer`` runs the same path as ``Leaf/Score``: the model version resolves by the
version rules (docs/versions-and-trimming.md), the inputs are admitted on what they declare (queue capacity,
``Converter.admit``, then the shared ``InflightBytes`` bound) before a payload is packed or
decoded, and the forward runs on the batcher's inference thread. Inputs are the model's
signature inputs by name, each ``[N, ...]`` or ``[1, ...]`` (broadcast); N is the largest
leading dim. Metadata comes from the signature (an input's datatype and shape once declared
or learned), readiness from the repository. Errors map to status codes through
``leaf.errors.to_status``. Runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
from typing import cast

import grpc

from contract.oip import OUTPUT_DATATYPE, PLATFORM
from leaf import metrics
from leaf.admission import InflightBytes
from leaf.batcher import Batcher
from leaf.errors import InvalidRequest, LeafError, to_status
from leaf.model_call import CallOutcome, run_admitted
from leaf.repository import Repository
from protos.inference import grpc_predict_v2_pb2 as oip_pb2
from wire import oip
from wire.codec import DecodeLimits, Tensor
from wire.oip_service import WireInfer, package_version
from transport import tracing
from transport.status import abort


SERVER_NAME = "rootleaf-leaf"


class LeafOipServicer:
    """OIP over the leaf's repository, batcher and in-flight bound (shared with ``Leaf``)."""

    def __init__(
        self, repository: Repository, batcher: Batcher, *, inflight: InflightBytes, limits: DecodeLimits
    ) -> None:
        self._repository = repository
        self._batcher = batcher
        self._inflight = inflight
        self._limits = limits

    async def server_live(
        self, request: oip_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ServerLiveResponse:
        return oip_pb2.ServerLiveResponse(live=True)

    async def server_ready(
        self, request: oip_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ServerReadyResponse:
        slots = self._repository.slots()
        ready = bool(slots) and all(slot.latest is not None for slot in slots.values())
        return oip_pb2.ServerReadyResponse(ready=ready)

    async def server_metadata(
        self, request: oip_pb2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ServerMetadataResponse:
        return oip_pb2.ServerMetadataResponse(name=SERVER_NAME, version=package_version())

    async def model_ready(
        self, request: oip_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ModelReadyResponse:
        try:
            self._repository.resolve(request.name, request.version)
        except LeafError:
            return oip_pb2.ModelReadyResponse(ready=False)
        return oip_pb2.ModelReadyResponse(ready=True)

    async def model_metadata(
        self, request: oip_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ModelMetadataResponse:
        try:
            loaded = self._repository.resolve(request.name, request.version)
        except LeafError as exc:
            status = to_status(exc)
            await abort(context, status.code, status.message)
        slot = self._repository.slots()[loaded.model]
        response = oip_pb2.ModelMetadataResponse(
            name=loaded.model, versions=[v.version for v in slot.versions], platform=PLATFORM
        )
        for name, (dtype, shape) in zip(loaded.converter.input_names, loaded.converter.expected):
            response.inputs.add(
                name=name,
                datatype="" if dtype is None else oip.datatype_of_wire(dtype),
                shape=[-1] if shape is None else [-1, *shape],
            )
        for name in loaded.signature.output_names:
            response.outputs.add(name=name, datatype=OUTPUT_DATATYPE, shape=[-1])
        return response

    async def model_infer(self, wire: WireInfer, context: grpc.aio.ServicerContext) -> oip_pb2.ModelInferResponse:
        request = wire.message
        outcome = CallOutcome()
        try:
            admitting = tracing.clock()
            if wire.error:
                raise InvalidRequest(wire.error)
            loaded = self._repository.resolve(request.model_name, request.model_version)
            outcome.served(loaded)
            metrics.RECEIVED_BYTES.labels(loaded.model, "wire").inc(wire.size)
            try:
                names = oip.requested_outputs(request, loaded.signature.output_names)
                headers = oip.read_headers(request, self._limits)
            except oip.OipError as exc:
                raise InvalidRequest(str(exc)) from None
            self._batcher.check_capacity(loaded)
            n = max((t.shape[0] for t in headers.tensors), default=1) or 1
            # Headers carry the Tensor fields admission and decoding read.
            admitted = loaded.converter.admit(cast(tuple[Tensor, ...], headers.tensors), n)
            tracing.record("admit", admitting)

            def payloads() -> dict[int, memoryview]:  # packed under the hold
                try:
                    return {p: memoryview(b) for p, b in oip.payloads(request, headers).items()}
                except oip.OipError as exc:
                    raise InvalidRequest(str(exc)) from None

            outputs = await run_admitted(
                loaded, admitted, payloads, message_bytes=wire.size, request_id=request.id,
                context=context, inflight=self._inflight, batcher=self._batcher,
            )
            encoding = tracing.clock()
            response = oip_pb2.ModelInferResponse(model_name=loaded.model, model_version=loaded.version, id=request.id)
            oip.write_outputs(response, outputs, names, raw=headers.raw)
            tracing.record("encode", encoding)
        except asyncio.CancelledError:
            outcome.cancelled()
            raise
        except Exception as exc:
            await outcome.fail(exc, context, f"OIP request {request.id!r} to model {request.model_name!r}")
        outcome.finished()
        return response
