"""``Leaf/ScorePartition``: several models in one call, each feature sent once, one reply per model."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from leaf.config import LeafConfig
from leaf.partition import PARTITION_LABEL
from harness.leaf_hooks import ObservedRequest
from protos.rootleaf.v1 import leaf_pb2
from tests.service.test_leaf_server import (
    OUTPUTS, WIDTHS, Leaf, expected_scores, export_demo, features, run, sample, scores_of,
)
from wire import codec
from wire.pack_writer import PartitionModelRef, TensorPacker, assemble_partition_request, encode_pack

NAMES = list(WIDTHS)


def partition_request(
    arrays: dict[str, np.ndarray], n: int, models: list[tuple[str, str, list[str]]], rid: str = "p"
) -> leaf_pb2.PartitionRequest:
    names = list(arrays)
    request = leaf_pb2.PartitionRequest(request_id=rid, num_candidates=n)
    for model, version, inputs in models:
        request.models.add(name=model, version=version, features=[names.index(i) for i in inputs])
    request.features.CopyFrom(encode_pack(arrays))
    return request


def reply_scores(reply: leaf_pb2.ModelReply) -> np.ndarray:
    assert reply.error_code == 0, reply.error_message
    return scores_of(leaf_pb2.LeafResponse(outputs=reply.outputs))


def test_one_call_scores_every_model_like_separate_calls(tmp_path: Path) -> None:
    first = export_demo(tmp_path, "first", "1", seed=1)
    second = export_demo(tmp_path, "second", "3", seed=2)
    seen: list[ObservedRequest] = []
    n = 9
    arrays = features(n)
    extra = {"unused": np.ones((n, 2), np.float32)}

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0), seen.append) as leaf:
            wire_before = sample("rootleaf_leaf_received_bytes_total", {"model": PARTITION_LABEL, "stage": "wire"})
            request = partition_request({**extra, **arrays}, n, [("first", "1", NAMES), ("second", "3", NAMES[::-1])])
            response = await leaf.stub.ScorePartition(request)
            assert [r.model for r in response.models] == ["first", "second"]
            assert [r.version for r in response.models] == ["1", "3"]
            np.testing.assert_allclose(reply_scores(response.models[0]), expected_scores(first, arrays, n), rtol=1e-6)
            np.testing.assert_allclose(reply_scores(response.models[1]), expected_scores(second, arrays, n), rtol=1e-6)
            # the same scores as Leaf/Score for the same model and features
            single = leaf_pb2.LeafRequest(request_id="s", model="first", version="1", num_candidates=n)
            single.features.extend(codec.encode(k, a) for k, a in arrays.items())
            assert np.array_equal(scores_of(await leaf.stub.Score(single)), reply_scores(response.models[0]))
            wire_after = sample("rootleaf_leaf_received_bytes_total", {"model": PARTITION_LABEL, "stage": "wire"})
            assert wire_after - wire_before == request.ByteSize()

    run(body)
    partition_seen = [o for o in seen if o.request_id == "p"]
    assert [(o.model, o.version_served) for o in partition_seen] == [("first", "1"), ("second", "3")]
    assert partition_seen[1].feature_names == tuple(NAMES[::-1])


def test_a_failing_model_fails_only_itself(tmp_path: Path) -> None:
    module = export_demo(tmp_path, "good", "1")
    export_demo(tmp_path, "other", "1")
    n = 4
    arrays = features(n)

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0)) as leaf:
            request = partition_request(arrays, n, [
                ("missing_model", "1", NAMES),
                ("good", "1", NAMES),
                ("other", "1", NAMES[:2]),  # lacks two of its inputs
            ])
            response = await leaf.stub.ScorePartition(request)
            codes = [grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == r.error_code))
                     for r in response.models]
            assert codes == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT]
            assert "item_price" in response.models[2].error_message
            np.testing.assert_allclose(reply_scores(response.models[1]), expected_scores(module, arrays, n), rtol=1e-6)

    run(body)


def test_root_assembled_bytes_parse_and_score(tmp_path: Path) -> None:
    module = export_demo(tmp_path, "m", "1")
    n = 5
    arrays = features(n, seed=3)
    batch = TensorPacker("lz4").pack_many(list(arrays), list(arrays.values()))
    payload = assemble_partition_request("a", n, [PartitionModelRef("m", "1", tuple(range(len(arrays))))], batch)

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0)) as leaf:
            call = leaf.channel.unary_unary(
                "/rootleaf.v1.Leaf/ScorePartition", request_serializer=None,
                response_deserializer=leaf_pb2.PartitionResponse.FromString,
            )
            response = await call(payload)
            np.testing.assert_allclose(reply_scores(response.models[0]), expected_scores(module, arrays, n), rtol=1e-6)

    run(body)


@pytest.mark.parametrize("damage", ["table", "dims", "offset", "lz4_bomb", "index", "no_models"])
def test_malformed_packs_are_invalid_argument(tmp_path: Path, damage: str) -> None:
    export_demo(tmp_path, "m", "1")
    n = 3
    arrays = features(n)
    request = partition_request(arrays, n, [("m", "1", NAMES)])
    pack = request.features
    if damage == "table":
        pack.table = pack.table[:-1]
    elif damage == "dims":
        pack.dims = pack.dims + b"\0\0\0\0"
    elif damage == "offset":
        table = bytearray(pack.table)
        table[-12:-8] = (len(pack.data) + 8).to_bytes(4, "little")
        pack.table = bytes(table)
    elif damage == "lz4_bomb":
        table = bytearray(pack.table)
        dims = bytearray(pack.dims)
        table[-3] = 1  # LZ4 encoding on the last entry
        dims[-4:] = (1 << 28).to_bytes(4, "little")  # declares a huge decoded size
        pack.table, pack.dims = bytes(table), bytes(dims)
    elif damage == "index":
        request.models[0].features.append(99)
    elif damage == "no_models":
        del request.models[:]

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0)) as leaf:
            try:
                response = await leaf.stub.ScorePartition(request)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
                return
            # a bad index is this model's own error
            assert damage == "index"
            assert response.models[0].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            # the leaf still serves
            ok = await leaf.stub.ScorePartition(partition_request(arrays, n, [("m", "1", NAMES)]))
            assert ok.models[0].error_code == 0

    run(body)


def test_a_version_not_loaded_is_that_models_failed_precondition(tmp_path: Path) -> None:
    module = export_demo(tmp_path, "kept", "2")
    export_demo(tmp_path, "moved", "5")
    n = 3
    arrays = features(n)

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, max_queue_delay_ms=0)) as leaf:
            request = partition_request(arrays, n, [("moved", "4", NAMES), ("kept", "2", NAMES)])
            response = await leaf.stub.ScorePartition(request)
            moved, kept = response.models
            assert moved.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0] and not moved.outputs
            assert kept.version == "2"
            np.testing.assert_allclose(reply_scores(kept), expected_scores(module, arrays, n), rtol=1e-6)

    run(body)
