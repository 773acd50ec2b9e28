"""Hostile ``Root/Score`` (and OIP ``ModelInfer``) requests: each family is refused on its counts or declared sizes,
and the root's Python-side memory while it answers (``tracemalloc``: Python objects and
numpy arrays; gRPC's and protobuf's C buffers are outside it, bounded by the message limit)
stays within a small multiple of the request's size.

The requests are built as raw bytes (protobuf concatenation appends to repeated fields) and
sent through a real channel with no serializer, so the client allocates nothing per element.
No leaf is needed: every family is answered before any leaf call.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from harness.datagen import generate_local_store
from protos.rootleaf.v1 import root_pb2, tensor_pb2
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.config import FeatureStoreConfig, PartitionConfig, RootConfig
from root.server import create_server
from wire.codec import DType, Encoding

INPUT_BYTES = 1 << 20
# Peak traced bytes allowed per byte of request, plus a constant for the call's own objects.
MAX_AMPLIFICATION = 3
SLACK_BYTES = 1 << 20

BASE = root_pb2.ScoreRequest(
    request_id="hostile", user_id=1, candidate_ids=[1], models=[root_pb2.ModelRef(name="m")]
).SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bomb() -> bytes:
    tensor = tensor_pb2.Tensor(
        name="u0", dtype=int(DType.FLOAT32), shape=[1, 1 << 28], encoding=int(Encoding.LZ4),
        raw_size=4 << 28, data=b"\x00" * 64,
    )
    return BASE + _field(5, tensor.SerializeToString())


SCORE = "/rootleaf.v1.Root/Score"
INFER = "/inference.GRPCInferenceService/ModelInfer"
INFER_BASE = _field(1, b"m")  # model_name


def _oip_input(name: bytes, dims: bytes) -> bytes:
    return _field(5, _field(1, name) + _field(2, b"INT64") + _field(3, dims))


# family -> (request bytes, expected code, words the message names)
FAMILIES: dict[str, tuple[bytes, grpc.StatusCode, str]] = {
    "empty models": (BASE + b"\x22\x00" * (INPUT_BYTES // 2), grpc.StatusCode.INVALID_ARGUMENT, "max_models"),
    "candidate ids": (BASE + _field(3, b"\x00" * INPUT_BYTES), grpc.StatusCode.INVALID_ARGUMENT, "max_candidates"),
    "empty request features": (
        BASE + b"\x2a\x00" * (INPUT_BYTES // 2), grpc.StatusCode.INVALID_ARGUMENT, "max_request_features",
    ),
    "long model name": (
        BASE + _field(4, _field(1, b"x" * INPUT_BYTES)), grpc.StatusCode.NOT_FOUND, "not hosted by any partition",
    ),
    "declared decoded size": (_bomb(), grpc.StatusCode.INVALID_ARGUMENT, "max_request_feature_bytes"),
    # The same root through the Open Inference Protocol.
    "oip input rank": (
        INFER_BASE + _oip_input(b"candidate_ids", b"\x01" * INPUT_BYTES), grpc.StatusCode.INVALID_ARGUMENT, "rank",
    ),
    "oip empty inputs": (INFER_BASE + b"\x2a\x00" * (INPUT_BYTES // 2), grpc.StatusCode.INVALID_ARGUMENT, "inputs"),
}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RootConfig]:
    tmp = tmp_path_factory.mktemp("hostile-root")
    catalog = FeatureCatalog.of(
        [FeatureSpec("u0", Entity.REQUEST, "float32", ()), FeatureSpec("c0", Entity.CANDIDATE, "float32", ())]
    )
    catalog.save(tmp / "catalog.json")
    generate_local_store(catalog, tmp / "store", users=4, items=8, seed=1)
    # Port 9 (discard) on loopback: nothing serves it, and nothing here reaches a leaf.
    yield RootConfig(
        catalog=tmp / "catalog.json",
        partitions={"p": PartitionConfig("p", ("127.0.0.1:9",), ("m",))},
        feature_store=FeatureStoreConfig(kind="local", path=tmp / "store"),
    )


async def _peak_of_call(target: str, method: str, payload: bytes) -> tuple[grpc.StatusCode, str, int]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        try:
            await call(payload, timeout=30)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        else:
            code, details = grpc.StatusCode.OK, ""
        peak = tracemalloc.get_traced_memory()[1] - before
    return code, details, peak


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hostile_score_requests_are_refused_within_a_small_multiple_of_their_size(
    config: RootConfig, family: str
) -> None:
    payload, expected, words = FAMILIES[family]

    async def scenario() -> tuple[grpc.StatusCode, str, int]:
        server, port = create_server(config)
        await server.start()
        tracemalloc.start()
        try:
            method = INFER if family.startswith("oip ") else SCORE
            return await _peak_of_call(f"127.0.0.1:{port}", method, payload)
        finally:
            tracemalloc.stop()
            await server.stop(None)

    code, details, peak = asyncio.run(scenario())
    assert code == expected, (family, code, details[:200])
    assert words in details
    # The client's own text comes back cut short, not echoed whole.
    assert len(details) < 1024
    assert peak <= MAX_AMPLIFICATION * len(payload) + SLACK_BYTES, (family, peak, len(payload))

