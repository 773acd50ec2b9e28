"""Leaf decoders and admission check counts and declared sizes before touching elements.

Each hostile input is a few MiB of elements a valid request never has that many of; the
work done before the refusal is measured by what Python allocates meanwhile (tracemalloc:
the scans and admission here allocate only Python objects), which per-element work makes
proportional to the element count.
"""

from __future__ import annotations

import tracemalloc
from typing import Callable, TypeVar

import numpy as np
import pytest

from leaf.converter import Converter
from leaf.errors import InvalidRequest
from leaf.export import Signature
from leaf.partition import deserialize_partition
from leaf.payload_views import DEFAULT_BOUNDS
from leaf.servicer import deserialize_request
from protos.rootleaf.v1 import leaf_pb2
from wire.codec import CodecError, DecodeLimits
from wire.pack_reader import PackReader, read_pack
from wire.pack_writer import encode_pack
from wire.protowire import count_fields, frame_field, varint

T = TypeVar("T")
MIB = 1 << 20


def peak_of(work: Callable[[], T]) -> tuple[T, int]:
    """``work()``'s result and the most bytes Python held at once while it ran."""
    tracemalloc.start()
    try:
        result = work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_count_fields_stops_past_its_limit() -> None:
    data = b"\x0a\x00" * 1000
    assert count_fields(data, 0, len(data), 2000) == 1000
    assert count_fields(data, 0, len(data), 10) == 11
    with pytest.raises(ValueError):
        count_fields(b"\x0a\x05ab", 0, 4, 10)


# Finding 1: the payload splitter scanned every top-level field, with a tuple per field.
@pytest.mark.parametrize("field", [b"\x0a\x00", b"\x10\x00", b"\x1a\x00", b"\x42\x00"])
def test_partition_requests_with_more_fields_than_a_valid_one_are_refused_after_bounded_work(field: bytes) -> None:
    data = field * (2 * MIB)  # 4 MiB: request_id, num_candidates, models or unknown fields
    wire, peak = peak_of(lambda: deserialize_partition(data))
    assert "more than" in wire.error and str(DEFAULT_BOUNDS.partition_fields) in wire.error
    assert peak < MIB


def test_leaf_requests_with_more_fields_than_a_valid_one_are_refused_after_bounded_work() -> None:
    for field in (b"\x0a\x00", b"\x2a\x00"):  # request ids, empty tensors
        for count in (1 << 16, 2 * MIB):  # below the split size and above it
            data = field * count
            wire, peak = peak_of(lambda: deserialize_request(data))
            assert "more than" in wire.error and str(DEFAULT_BOUNDS.request_fields) in wire.error
            assert peak < MIB


def test_infer_requests_with_more_fields_than_a_valid_one_are_refused_after_bounded_work() -> None:
    from wire.oip_service import MAX_INFER_FIELDS, deserialize_infer

    data = b"\x2a\x00" * (2 * MIB)  # 2M empty inputs
    wire, peak = peak_of(lambda: deserialize_infer(data))
    assert "more than" in wire.error and str(MAX_INFER_FIELDS) in wire.error
    assert peak < MIB


def test_a_pack_with_more_names_than_tensors_allowed_is_refused() -> None:
    body = b"\x0a\x00" * (DEFAULT_BOUNDS.pack_names + 4)  # more fields than a valid pack has
    pack = leaf_pb2.PartitionRequest(models=[leaf_pb2.PartitionModel(name="m")]).SerializeToString()
    pack += b"\x22" + varint(len(body)) + body
    assert "more than" in deserialize_partition(pack).error
    # as many fields as a valid pack may have are parsed (and refused later by the count)
    body = body[8:]
    ok = leaf_pb2.PartitionRequest(models=[leaf_pb2.PartitionModel(name="m")]).SerializeToString()
    ok += b"\x22" + varint(len(body)) + body
    assert not deserialize_partition(ok).error



# Finding 2: counts are checked before anything is built per element.
def test_score_admission_checks_the_tensor_count_first() -> None:
    request = leaf_pb2.LeafRequest.FromString(b"\x2a\x00" * (2 * MIB))  # 2M empty tensors
    converter = Converter(Signature(("x",), ("s",)), DecodeLimits(), 100)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest, match="tensors exceed the limit"):
            converter.admit(request.features, 4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MIB


def test_pack_admission_checks_the_index_count_first() -> None:
    pack = encode_pack({"x": np.ones((4, 1), np.float32)}, "none")
    table = PackReader(DecodeLimits()).read(pack)
    indexes = leaf_pb2.PartitionModel.FromString(b"\x1a" + varint(4 * MIB) + b"\x00" * (4 * MIB)).features
    converter = Converter(Signature(("x",), ("s",)), DecodeLimits(), 100)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest, match="exceed the limit"):
            converter.admit_pack(table, indexes, 4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MIB


# Finding 8: the dims' count is compared with the ranks before any dim becomes an int.
def test_pack_dims_are_counted_against_the_ranks_before_they_are_read() -> None:
    pack = encode_pack({"x": np.ones((4, 1), np.float32)}, "none")
    pack.dims = pack.dims + b"\x01\x00\x00\x00" * MIB  # 4 MiB of dims no rank asks for
    for read in (lambda: read_pack(pack, DecodeLimits()), lambda: PackReader(DecodeLimits()).read(pack)):
        tracemalloc.start()
        try:
            with pytest.raises(CodecError, match="dims hold"):
                read()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2.5 * len(pack.dims)  # copies of the field (one per read), no int per dim


# Finding 9: a shape without elements may not describe an array numpy cannot index.
def test_empty_shapes_with_huge_dims_are_refused_as_over_the_limit() -> None:
    pack = encode_pack({"x": np.ones((4, 1), np.float32)}, "none")
    pack.table = pack.table[:8] + b"\x01\x00\x03\x00"  # float32, RAW, rank 3
    pack.dims = np.array([0, 2**32 - 1, 2**32 - 1], "<u4").tobytes()
    pack.data = b""
    table = bytearray(pack.table)
    table[4:8] = (0).to_bytes(4, "little")
    pack.table = bytes(table)
    with pytest.raises(CodecError, match="non-zero dims"):
        read_pack(pack, DecodeLimits())
    small = encode_pack({"x": np.ones((4, 0, 7), np.float32)}, "none")
    assert read_pack(small, DecodeLimits())[0].shape == (4, 0, 7)
