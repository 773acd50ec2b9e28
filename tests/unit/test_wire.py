"""Request assembly by concatenation equals protobuf serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from protos import codec
from protos.rootleaf.v1 import leaf_pb2
from protos.wire import EncodedTensor, assemble_leaf_request


def test_assembled_bytes_parse_to_the_same_request() -> None:
    rng = np.random.default_rng(1)
    tensors = [
        codec.encode("big", np.zeros((300, 100), dtype=np.float32)),  # > 127 bytes: multi-byte varint
        codec.encode("small", rng.random((1, 3)).astype(np.float32)),
        codec.encode("ids", rng.integers(0, 9, (300, 20))),
    ]
    encoded = [EncodedTensor.from_tensor(t) for t in tensors]
    header = leaf_pb2.LeafRequest(request_id="r1", model="m", version="2", num_candidates=300)
    wire = assemble_leaf_request(header, encoded[::2])
    expected = leaf_pb2.LeafRequest(request_id="r1", model="m", version="2", num_candidates=300)
    expected.features.extend(tensors[::2])
    assert wire == expected.SerializeToString()
    parsed = leaf_pb2.LeafRequest.FromString(wire)
    assert [t.name for t in parsed.features] == ["big", "ids"]
    assert sum(e.wire_size for e in encoded[::2]) == len(wire) - len(header.SerializeToString())


def test_header_with_features_is_refused() -> None:
    header = leaf_pb2.LeafRequest(model="m")
    header.features.add(name="x")
    with pytest.raises(ValueError):
        assemble_leaf_request(header, [])
