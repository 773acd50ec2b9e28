"""Request assembly by concatenation equals protobuf serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from wire import codec
from protos.rootleaf.v1 import leaf_pb2
from wire.frames import EncodedTensor, TensorFramer, assemble_leaf_request, encode_framed


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


def _framed_cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [
        ("dense", rng.random((256, 64)).astype(np.float32)),  # LZ4 not kept: RAW
        ("sparse", np.where(rng.random((300, 40)) < 0.8, 0, rng.random((300, 40))).astype(np.float32)),
        ("ids", rng.integers(0, 2**40, (17, 3))),
        ("half", rng.random((5, 128)).astype(np.float16)),
        ("flags", rng.random(9) < 0.5),
        ("bytes", rng.integers(0, 255, (4, 4), dtype=np.uint8)),
        ("scalar", np.asarray(np.float64(2.5))),
        ("empty", np.zeros((0, 4), dtype=np.int32)),
        ("big_endian", np.arange(50, dtype=">f4").reshape(5, 10)),
        ("strided", np.arange(400, dtype=np.float32).reshape(20, 20)[:, ::2]),
        ("", np.ones((2, 2), dtype=np.int8)),
        ("ü" * 100, np.ones((1, 3), dtype=np.float32)),  # name longer than 127 bytes
    ]


@pytest.mark.parametrize("compression", ["none", "lz4", "lz4_always"])
def test_encode_framed_equals_encoded_tensor_message(compression: str) -> None:
    for name, array in _framed_cases():
        framed = encode_framed(name, array, compression)
        expected = EncodedTensor.from_tensor(codec.encode(name, array, compression))
        assert framed == expected, name
        request = leaf_pb2.LeafRequest.FromString(framed.framed)
        assert request.features[0] == codec.encode(name, array, compression)
        if name:  # decode refuses unnamed tensors
            np.testing.assert_array_equal(codec.decode(request.features[0]), array)


def test_encode_framed_payload_is_a_snapshot_of_the_array() -> None:
    array = np.random.default_rng(4).random((64, 8)).astype(np.float32)
    framed = encode_framed("x", array, "none")
    array[:] = 0
    decoded = codec.decode(leaf_pb2.LeafRequest.FromString(framed.framed).features[0])
    assert decoded.any()


def test_encode_framed_rejects_unsupported_dtypes() -> None:
    with pytest.raises(codec.CodecError, match="'c'"):
        encode_framed("c", np.zeros(3, dtype=np.complex64))


@pytest.mark.parametrize("compression", ["none", "lz4", "lz4_always"])
def test_tensor_framer_equals_encode_framed_across_requests(compression: str) -> None:
    framer = TensorFramer(compression, max_headers=4)  # small: the oldest headers are evicted and rebuilt
    rng = np.random.default_rng(5)
    for n in (256, 3, 256):  # the same names with another leading dim, then the first again
        for name, array in _framed_cases():
            if array.ndim:
                array = np.resize(array, (n, *array.shape[1:]))
            assert framer.frame(name, array) == encode_framed(name, array, compression), (name, n)
        fresh = rng.random((n, 8)).astype(np.float32)  # new values under a cached header
        assert framer.frame("dense", fresh) == encode_framed("dense", fresh, compression)
        assert len(framer) <= 4


def test_tensor_framer_names_bad_input_like_encode_framed() -> None:
    framer = TensorFramer()
    with pytest.raises(codec.CodecError, match="'c'"):
        framer.frame("c", np.zeros(3, dtype=np.complex64))
    with pytest.raises(codec.CodecError, match="UTF-8"):
        framer.frame("\ud800", np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="max_headers"):
        TensorFramer(max_headers=0)
