"""``wire.protowire`` agrees with protobuf's own encoder and parser, and refuses what is cut
short or malformed."""

from __future__ import annotations

import numpy as np
import pytest

from protos.rootleaf.v1 import leaf_pb2, tensor_pb2
from wire import codec
from wire.protowire import (
    WIRE_TYPE_I32,
    WIRE_TYPE_I64,
    WIRE_TYPE_LEN,
    WIRE_TYPE_VARINT,
    field_body,
    frame_field,
    read_varint,
    scan_fields,
    tag,
    varint,
)

VARINTS = [0, 1, 127, 128, 300, 2**14 - 1, 2**14, 2**21, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1]


@pytest.mark.parametrize("value", VARINTS)
def test_varint_round_trips_and_is_what_protobuf_writes(value: int) -> None:
    encoded = varint(value)
    assert read_varint(encoded, 0) == (value, len(encoded))
    assert read_varint(b"\xff" + encoded + b"\x01", 1) == (value, 1 + len(encoded))
    if 0 < value < 2**32:  # a uint32 field: its tag, then protobuf's varint
        assert leaf_pb2.PartitionRequest(num_candidates=value).SerializeToString() == tag(2, WIRE_TYPE_VARINT) + encoded


@pytest.mark.parametrize(
    "case",
    [
        ("truncated varint", b"\x80\x80", IndexError),
        ("varint over 64 bits", b"\x80" * 10 + b"\x01", ValueError),
        ("truncated length-delimited field", tag(1, WIRE_TYPE_LEN) + varint(10) + b"abc", ValueError),
        ("truncated fixed64", tag(1, WIRE_TYPE_I64) + b"\0" * 7, ValueError),
        ("truncated fixed32", tag(1, WIRE_TYPE_I32) + b"\0" * 3, ValueError),
        ("group wire type", bytes([(1 << 3) | 3]), ValueError),
        ("key cut short", b"\x80", IndexError),
    ],
    ids=lambda c: c[0],
)
def test_malformed_bytes_are_refused(case: tuple[str, bytes, type[Exception]]) -> None:
    _, data, error = case
    with pytest.raises(error):
        scan_fields(data, 0, len(data))


def test_fields_of_a_serialised_message_are_found_in_order_with_exact_spans() -> None:
    tensor = codec.encode("ids", np.arange(40, dtype=np.int64).reshape(4, 10), "lz4")
    data = tensor.SerializeToString()
    fields = scan_fields(data, 0, len(data))
    by_name = tensor_pb2.Tensor.DESCRIPTOR.fields_by_number
    assert [by_name[number].name for number, *_ in fields] == [
        f.name for f, _ in tensor.ListFields()
    ]
    assert fields[0][2] == 0 and fields[-1][3] == len(data)
    assert all(a[3] == b[2] for a, b in zip(fields, fields[1:]))  # back to back
    for number, wire_type, start, end in fields:  # each span parses alone as that field
        alone = tensor_pb2.Tensor.FromString(data[start:end])
        name = by_name[number].name
        assert getattr(alone, name) == getattr(tensor, name)
        want = WIRE_TYPE_LEN if name in ("name", "shape", "data") else WIRE_TYPE_VARINT
        assert wire_type == want
    data_field = next(f for f in fields if by_name[f[0]].name == "data")
    assert data[field_body(data, data_field[2]):data_field[3]] == tensor.data


def test_fixed_width_fields_are_skipped_and_the_limit_holds() -> None:
    data = tag(9, WIRE_TYPE_I64) + b"\1" * 8 + tag(10, WIRE_TYPE_I32) + b"\2" * 4 + frame_field(3, b"xyz")
    assert [(n, t) for n, t, _, _ in scan_fields(data, 0, len(data))] == [
        (9, WIRE_TYPE_I64), (10, WIRE_TYPE_I32), (3, WIRE_TYPE_LEN),
    ]
    with pytest.raises(ValueError, match="too many fields"):
        scan_fields(data, 0, len(data), limit=2)
    assert len(scan_fields(data, 0, len(data), limit=3)) == 3


def test_frame_field_is_what_protobuf_writes_for_a_bytes_field() -> None:
    for payload in (b"a", b"x" * 300):
        assert frame_field(4, payload) == leaf_pb2.TensorPack(data=payload).SerializeToString()
    # protobuf leaves an empty field out; framed anyway, it parses back as empty
    assert frame_field(4, b"") == tag(4, WIRE_TYPE_LEN) + b"\0"
    assert leaf_pb2.TensorPack.FromString(frame_field(4, b"")).data == b""
