"""Large payloads stay in the received bytes: the split parse agrees with the whole parse."""

from __future__ import annotations

import numpy as np
import pytest

from leaf.converter import Converter
from leaf.export import Signature
from leaf.payload_views import SPLIT_REQUEST_BYTES, split_request
from leaf.servicer import deserialize_request
from protos.rootleaf.v1 import leaf_pb2
from wire import codec
from wire.codec import DecodeLimits
from wire.protowire import frame_field

N = 300
BIG = np.random.default_rng(0).standard_normal((N, 1024), dtype=np.float32)  # 1.2 MB, RAW
IDS = np.random.default_rng(1).integers(0, 1000, (N, 512), dtype=np.int64)  # 1.2 MB, LZ4 (compresses)
SMALL = np.ones((N, 1), np.float32)


def _request(*tensors: codec.Tensor) -> leaf_pb2.LeafRequest:
    request = leaf_pb2.LeafRequest(request_id="r", model="m", version="1", num_candidates=N)
    request.features.extend(tensors)
    return request


def _tensors() -> list[codec.Tensor]:
    return [codec.encode("small", SMALL), codec.encode("big", BIG), codec.encode("ids", IDS)]


def test_large_tensors_keep_their_payload_in_the_received_bytes() -> None:
    data = _request(*_tensors()).SerializeToString()
    assert len(data) >= SPLIT_REQUEST_BYTES
    wire = deserialize_request(data)
    assert not wire.error and sorted(wire.payloads) == [1, 2]
    assert all(view.obj is data for view in wire.payloads.values())
    whole = leaf_pb2.LeafRequest.FromString(data)
    for position, view in wire.payloads.items():
        assert wire.message.features[position].data == b"" and bytes(view) == whole.features[position].data
        wire.message.features[position].data = bytes(view)
    assert wire.message == whole
    converter = Converter(Signature(("big", "ids", "small"), ("s",)), DecodeLimits(), 10_000)
    split = converter.decode(converter.admit(wire.message.features, N), wire.payloads).tensors
    np.testing.assert_array_equal(split["big"].numpy(), BIG)
    np.testing.assert_array_equal(split["ids"].numpy(), IDS)
    np.testing.assert_array_equal(split["small"].numpy(), SMALL)


def test_requests_not_worth_or_not_safe_to_split_are_parsed_whole() -> None:
    small = _request(codec.encode("big", BIG[:10])).SerializeToString()
    assert split_request(small) is None
    many = _request(*[codec.encode(f"f{i}", SMALL) for i in range(80)], codec.encode("big", BIG))
    assert split_request(many.SerializeToString()) is None  # too many fields to scan
    # A tensor with two data fields (the last wins) is left to the protobuf parser.
    raw = leaf_pb2.LeafRequest(num_candidates=N).SerializeToString()
    tensor_bytes = codec.encode("big", BIG).SerializeToString() + codec.Tensor(data=b"\0" * 16).SerializeToString()
    two_data = raw + frame_field(leaf_pb2.LeafRequest.DESCRIPTOR.fields_by_name["features"].number, tensor_bytes)
    assert leaf_pb2.LeafRequest.FromString(two_data).features[0].data == b"\0" * 16
    assert split_request(two_data) is None
    wire = deserialize_request(two_data)
    assert not wire.payloads and wire.message.features[0].data == b"\0" * 16


@pytest.mark.parametrize("cut", [1, 3, 1000])
def test_truncated_requests_are_malformed_as_before(cut: int) -> None:
    data = _request(*_tensors()).SerializeToString()[:-cut]
    assert split_request(data) is None
    assert deserialize_request(data).error.startswith("malformed LeafRequest")
