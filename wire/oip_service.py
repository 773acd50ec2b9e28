"""The ``inference.GRPCInferenceService`` handler table both tiers serve, and the
``ModelInfer`` parse that never raises (a malformed request is answered INVALID_ARGUMENT by
the servicer, not UNKNOWN by gRPC). A servicer implements the six methods below."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, TypeAlias

import grpc
from google.protobuf.message import DecodeError, Message

from protos.inference import grpc_predict_v2_pb2 as oip_pb2
from wire.codec import DEFAULT_LIMITS
from wire.protowire import count_fields

__all__ = ["OIP_SERVICE_NAME", "OipServicer", "WireInfer", "deserialize_infer", "oip_handler"]

OIP_SERVICE_NAME = "inference.GRPCInferenceService"

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass(frozen=True, slots=True)
class WireInfer:
    """A parsed ``ModelInferRequest`` with its serialised size; ``error`` when it did not parse."""

    size: int
    message: oip_pb2.ModelInferRequest
    error: str = ""


# The most top-level fields a valid ``ModelInferRequest`` has: an input and a raw content per
# tensor, and room for requested outputs, parameters and the three names. Checked before the
# parser allocates per element (tens of bytes for each 2-byte ``inputs`` field).
MAX_INFER_FIELDS = 2 * DEFAULT_LIMITS.max_tensors + 512


def deserialize_infer(data: bytes) -> WireInfer:
    try:
        if len(data) > 2 * MAX_INFER_FIELDS and count_fields(data, 0, len(data), MAX_INFER_FIELDS) > MAX_INFER_FIELDS:
            error = f"ModelInferRequest holds more than {MAX_INFER_FIELDS} fields (inputs, raw contents, outputs, parameters)"
            return WireInfer(len(data), oip_pb2.ModelInferRequest(), error)
    except (IndexError, ValueError):
        return WireInfer(len(data), oip_pb2.ModelInferRequest(), "malformed ModelInferRequest: truncated or invalid field")
    try:
        return WireInfer(len(data), oip_pb2.ModelInferRequest.FromString(data))
    except DecodeError as exc:
        return WireInfer(len(data), oip_pb2.ModelInferRequest(), f"malformed ModelInferRequest: {exc}")


class OipServicer(Protocol):
    async def server_live(self, request: oip_pb2.ServerLiveRequest, context: Ctx) -> oip_pb2.ServerLiveResponse: ...

    async def server_ready(self, request: oip_pb2.ServerReadyRequest, context: Ctx) -> oip_pb2.ServerReadyResponse: ...

    async def server_metadata(
        self, request: oip_pb2.ServerMetadataRequest, context: Ctx
    ) -> oip_pb2.ServerMetadataResponse: ...

    async def model_ready(self, request: oip_pb2.ModelReadyRequest, context: Ctx) -> oip_pb2.ModelReadyResponse: ...

    async def model_metadata(
        self, request: oip_pb2.ModelMetadataRequest, context: Ctx
    ) -> oip_pb2.ModelMetadataResponse: ...

    async def model_infer(self, wire: WireInfer, context: Ctx) -> oip_pb2.ModelInferResponse: ...


def _unary(
    method: Callable[..., Awaitable[Message]], parse: Callable[[bytes], object], response: type[Message]
) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        method, request_deserializer=parse, response_serializer=response.SerializeToString
    )


def oip_handler(servicer: OipServicer) -> grpc.GenericRpcHandler:
    """The service's handler over ``servicer`` (methods the protocol has but rootleaf does
    not serve answer UNIMPLEMENTED)."""
    s, pb = servicer, oip_pb2
    return grpc.method_handlers_generic_handler(
        OIP_SERVICE_NAME,
        {
            "ServerLive": _unary(s.server_live, pb.ServerLiveRequest.FromString, pb.ServerLiveResponse),
            "ServerReady": _unary(s.server_ready, pb.ServerReadyRequest.FromString, pb.ServerReadyResponse),
            "ServerMetadata": _unary(
                s.server_metadata, pb.ServerMetadataRequest.FromString, pb.ServerMetadataResponse
            ),
            "ModelReady": _unary(s.model_ready, pb.ModelReadyRequest.FromString, pb.ModelReadyResponse),
            "ModelMetadata": _unary(s.model_metadata, pb.ModelMetadataRequest.FromString, pb.ModelMetadataResponse),
            "ModelInfer": _unary(s.model_infer, deserialize_infer, pb.ModelInferResponse),
        },
    )


def package_version() -> str:
    """rootleaf's installed version (``ServerMetadata``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rootleaf")
    except PackageNotFoundError:
        return "0"
