"""Received request bytes parsed with their large payloads left where gRPC put them.

Parsing a protobuf message copies every ``bytes`` field into the message, and reading the
field copies it again; for megabytes of tensor payload that is two copies per request. The
leaf instead locates the payload fields in the received bytes (a scan of the few top-level
fields, in Python), parses the message without them and keeps a ``memoryview`` of each. A
request not laid out as expected is parsed whole, as before. Pure functions.
"""

from __future__ import annotations

from protos.rootleaf.v1 import leaf_pb2, tensor_pb2
from wire.frames import frame_field

_PARTITION_FEATURES = leaf_pb2.PartitionRequest.DESCRIPTOR.fields_by_name["features"].number
_PACK_DATA = leaf_pb2.TensorPack.DESCRIPTOR.fields_by_name["data"].number
_REQUEST_FEATURES = leaf_pb2.LeafRequest.DESCRIPTOR.fields_by_name["features"].number
_TENSOR_DATA = tensor_pb2.Tensor.DESCRIPTOR.fields_by_name["data"].number
_LEN = 2

# A ``LeafRequest`` is scanned only from this size, and only its first this many top-level
# fields (a bound on the scan's cost: past it, each field averages kilobytes and is copied
# by the parser instead); tensors from ``SPLIT_TENSOR_BYTES`` keep their payload in place.
SPLIT_REQUEST_BYTES = 1 << 20
MAX_SCANNED_FIELDS = 64
SPLIT_TENSOR_BYTES = 64 << 10


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]  # IndexError on truncation
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes, start: int, end: int, limit: int | None = None) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, field start, field end) of each field in ``buf[start:end]``;
    ``ValueError`` past ``limit`` fields."""
    out: list[tuple[int, int, int, int]] = []
    pos = start
    while pos < end:
        if limit is not None and len(out) >= limit:
            raise ValueError("too many fields to scan")
        first = pos
        key, pos = _varint(buf, pos)
        wire_type = key & 7
        if wire_type == 0:
            _, pos = _varint(buf, pos)
        elif wire_type == _LEN:
            length, pos = _varint(buf, pos)
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire_type}")
        if pos > end:
            raise ValueError("truncated field")
        out.append((key >> 3, wire_type, first, pos))
    return out


def _body(buf: bytes, field_start: int) -> int:
    """Where a length-delimited field's payload starts."""
    _, pos = _varint(buf, field_start)
    _, pos = _varint(buf, pos)
    return pos


def split_partition(data: bytes) -> tuple[bytes, memoryview] | None:
    """A ``PartitionRequest`` without its pack's ``data`` field, and a view of that field's
    payload; None when the request is not laid out as roots write it (one ``features`` field
    whose first field is ``data``): the caller then parses it whole."""
    try:
        top = _fields(data, 0, len(data))
        features = [f for f in top if f[0] == _PARTITION_FEATURES]
        if len(features) != 1 or features[0][1] != _LEN:
            return None
        _, _, first, end = features[0]
        inner_start = _body(data, first)
        key, pos = _varint(data, inner_start)
        if key != (_PACK_DATA << 3) | _LEN:
            return None
        length, payload_start = _varint(data, pos)
        payload_end = payload_start + length
        if payload_end > end:
            return None
    except (IndexError, ValueError):
        return None
    small = b"".join(
        [data[f[2]:f[3]] for f in top if f[0] != _PARTITION_FEATURES]
        + [frame_field(_PARTITION_FEATURES, data[payload_end:end])]
    )
    return small, memoryview(data)[payload_start:payload_end]


def split_request(data: bytes) -> tuple[bytes, dict[int, memoryview]] | None:
    """A ``LeafRequest`` whose large tensors (``SPLIT_TENSOR_BYTES``) lack their ``data``
    field, and a view of each one's payload keyed by the tensor's position in ``features``;
    None when there is none to split, the request is small, has many fields, or is not laid
    out as expected (a tensor with two ``data`` fields): the caller then parses it whole."""
    if len(data) < SPLIT_REQUEST_BYTES:
        return None
    try:
        top = _fields(data, 0, len(data), MAX_SCANNED_FIELDS)
        parts: list[bytes] = []
        views: dict[int, memoryview] = {}
        position = 0
        for number, wire_type, start, end in top:
            if number != _REQUEST_FEATURES or wire_type != _LEN:
                parts.append(data[start:end])
                continue
            if end - start >= SPLIT_TENSOR_BYTES:
                body = _body(data, start)
                inner = _fields(data, body, end)
                payloads = [f for f in inner if f[0] == _TENSOR_DATA]
                if len(payloads) != 1 or payloads[0][1] != _LEN:
                    return None
                _, _, data_start, data_end = payloads[0]
                views[position] = memoryview(data)[_body(data, data_start):data_end]
                parts.append(frame_field(_REQUEST_FEATURES, data[body:data_start] + data[data_end:end]))
            else:
                parts.append(data[start:end])
            position += 1
    except (IndexError, ValueError):
        return None
    if not views:
        return None
    return b"".join(parts), views
