"""Received request bytes parsed with their large payloads left where gRPC put them.

Parsing a protobuf message copies every ``bytes`` field into the message, and reading the
field copies it again; for megabytes of tensor payload that is two copies per request. The
leaf instead locates the payload fields in the received bytes (a scan of the few top-level
fields, in Python), parses the message without them and keeps a ``memoryview`` of each. A
request not laid out as expected is parsed whole, as before. Pure functions.
"""

from __future__ import annotations

from protos.rootleaf.v1 import leaf_pb2, tensor_pb2
from wire.protowire import WIRE_TYPE_LEN, field_body, frame_field, read_varint, scan_fields

_PARTITION_FEATURES = leaf_pb2.PartitionRequest.DESCRIPTOR.fields_by_name["features"].number
_PACK_DATA = leaf_pb2.TensorPack.DESCRIPTOR.fields_by_name["data"].number
_REQUEST_FEATURES = leaf_pb2.LeafRequest.DESCRIPTOR.fields_by_name["features"].number
_TENSOR_DATA = tensor_pb2.Tensor.DESCRIPTOR.fields_by_name["data"].number

# A ``LeafRequest`` is scanned only from this size, and only its first this many top-level
# fields (a bound on the scan's cost: past it, each field averages kilobytes and is copied
# by the parser instead); tensors from ``SPLIT_TENSOR_BYTES`` keep their payload in place.
SPLIT_REQUEST_BYTES = 1 << 20
MAX_SCANNED_FIELDS = 64
SPLIT_TENSOR_BYTES = 64 << 10


def split_partition(data: bytes) -> tuple[bytes, memoryview] | None:
    """A ``PartitionRequest`` without its pack's ``data`` field, and a view of that field's
    payload; None when the request is not laid out as roots write it (one ``features`` field
    whose first field is ``data``): the caller then parses it whole."""
    try:
        top = scan_fields(data, 0, len(data))
        features = [f for f in top if f[0] == _PARTITION_FEATURES]
        if len(features) != 1 or features[0][1] != WIRE_TYPE_LEN:
            return None
        _, _, first, end = features[0]
        inner_start = field_body(data, first)
        key, pos = read_varint(data, inner_start)
        if key != (_PACK_DATA << 3) | WIRE_TYPE_LEN:
            return None
        length, payload_start = read_varint(data, pos)
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
        top = scan_fields(data, 0, len(data), MAX_SCANNED_FIELDS)
        parts: list[bytes] = []
        views: dict[int, memoryview] = {}
        position = 0
        for number, wire_type, start, end in top:
            if number != _REQUEST_FEATURES or wire_type != WIRE_TYPE_LEN:
                parts.append(data[start:end])
                continue
            if end - start >= SPLIT_TENSOR_BYTES:
                body = field_body(data, start)
                inner = scan_fields(data, body, end)
                payloads = [f for f in inner if f[0] == _TENSOR_DATA]
                if len(payloads) != 1 or payloads[0][1] != WIRE_TYPE_LEN:
                    return None
                _, _, data_start, data_end = payloads[0]
                views[position] = memoryview(data)[field_body(data, data_start):data_end]
                parts.append(frame_field(_REQUEST_FEATURES, data[body:data_start] + data[data_end:end]))
            else:
                parts.append(data[start:end])
            position += 1
    except (IndexError, ValueError):
        return None
    if not views:
        return None
    return b"".join(parts), views
