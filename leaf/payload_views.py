"""Received request bytes: field counts bounded before parsing, large payloads left in place.

Before the protobuf parser sees a request, the number of its fields is checked against
what a valid request can hold (``FieldBounds``, from the leaf's limits), with work that
stops at the bound: the parser allocates tens of bytes per element of a repeated message
field (2 bytes of ``features`` field cost ~80), so a count check after parsing would come too
late. A request over a bound is refused (``TooManyFields``), never scanned further.

Parsing a protobuf message copies every ``bytes`` field into the message, and reading the
field copies it again; for megabytes of tensor payload that is two copies per request. The
leaf instead locates the payload fields in the received bytes (a bounded scan of the few
top-level fields, in Python), parses the message without them and keeps a ``memoryview``
of each. A request not laid out as expected is parsed whole. Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from protos.rootleaf.v1 import leaf_pb2, tensor_pb2
from wire.codec import DecodeLimits
from wire.protowire import WIRE_TYPE_LEN, count_fields, field_body, frame_field, read_varint, scan_fields, tag

_PARTITION_FEATURES = leaf_pb2.PartitionRequest.DESCRIPTOR.fields_by_name["features"].number
_PARTITION_MODELS = leaf_pb2.PartitionRequest.DESCRIPTOR.fields_by_name["models"].number
_PACK_DATA = leaf_pb2.TensorPack.DESCRIPTOR.fields_by_name["data"].number
_PACK_NAMES_TAG = tag(leaf_pb2.TensorPack.DESCRIPTOR.fields_by_name["names"].number, WIRE_TYPE_LEN)
_REQUEST_FEATURES = leaf_pb2.LeafRequest.DESCRIPTOR.fields_by_name["features"].number
_TENSOR_DATA = tensor_pb2.Tensor.DESCRIPTOR.fields_by_name["data"].number
_TENSOR_SHAPE = tensor_pb2.Tensor.DESCRIPTOR.fields_by_name["shape"].number
# A valid tensor's fields, each once (an unpacked shape would add up to max_rank more).
_TENSOR_FIELDS = len(tensor_pb2.Tensor.DESCRIPTOR.fields) + 8
# Fields of each message other than its one repeated field (each written at most once).
_REQUEST_SINGLE_FIELDS = len(leaf_pb2.LeafRequest.DESCRIPTOR.fields) - 1
_PARTITION_SINGLE_FIELDS = len(leaf_pb2.PartitionRequest.DESCRIPTOR.fields) - 1
_PACK_SINGLE_FIELDS = len(leaf_pb2.TensorPack.DESCRIPTOR.fields) - 1
# Every field takes at least 2 bytes (key and a one-byte value or length).
_MIN_FIELD_BYTES = 2

# A ``LeafRequest`` is split only from this size, and only when it has at most this many
# top-level fields (past it, each field averages kilobytes and is copied by the parser
# instead); tensors from ``SPLIT_TENSOR_BYTES`` keep their payload in place.
SPLIT_REQUEST_BYTES = 1 << 20
MAX_SCANNED_FIELDS = 64
SPLIT_TENSOR_BYTES = 64 << 10
# Requests from this size have their large tensors' fields checked before parsing.
INSPECT_REQUEST_BYTES = 1 << 20
INSPECT_TENSOR_BYTES = 1 << 10


class TooManyFields(ValueError):
    """A request holds more fields than a valid one can (names the bound)."""


@dataclass(frozen=True, slots=True)
class FieldBounds:
    """The most fields a valid request of each kind has: its repeated field's limit plus
    one per other field."""

    request_fields: int
    """``LeafRequest``: ``max_tensors`` features and its other fields."""
    partition_fields: int
    """``PartitionRequest``: ``max_models`` models and its other fields."""
    pack_names: int
    """``TensorPack``: ``max_tensors`` names."""
    shape_bytes: int
    """A tensor's packed ``shape``: ``max_rank`` varints of at most 10 bytes."""
    model_bytes: int
    """A ``PartitionModel``: a name and a version of at most 255 UTF-8 bytes each and at most
    ``max_tensors`` indexes of at most 5 bytes, with their tags and lengths."""

    @classmethod
    def of(cls, limits: DecodeLimits, max_models: int) -> "FieldBounds":
        return cls(
            limits.max_tensors + _REQUEST_SINGLE_FIELDS,
            max_models + _PARTITION_SINGLE_FIELDS,
            limits.max_tensors,
            10 * limits.max_rank,
            2 * (255 + 3) + 5 * limits.max_tensors + 8,
        )


DEFAULT_MAX_MODELS = 256
DEFAULT_BOUNDS = FieldBounds.of(DecodeLimits(), DEFAULT_MAX_MODELS)


def check_field_count(data: bytes | memoryview, start: int, end: int, limit: int, what: str) -> None:
    """``TooManyFields`` when ``data[start:end]`` holds more than ``limit`` fields, found with
    O(min(fields, limit)) work; ``ValueError``/``IndexError`` for bytes malformed before it."""
    if end - start <= _MIN_FIELD_BYTES * limit:
        return
    if count_fields(data, start, end, limit) > limit:
        raise TooManyFields(f"{what} holds more than {limit} fields")


def check_request(data: bytes, bounds: FieldBounds = DEFAULT_BOUNDS) -> None:
    """Bound a ``LeafRequest``'s fields (at most ``bounds.request_fields``) before parsing;
    from ``INSPECT_REQUEST_BYTES`` on, also each tensor of ``INSPECT_TENSOR_BYTES`` or more:
    at most ``_TENSOR_FIELDS`` fields and a packed ``shape`` of at most ``max_rank`` dims (the
    parser makes 8 bytes of every 1-byte dim). A smaller request can cost the parser at most
    ~16x its size, a few MiB."""
    check_field_count(data, 0, len(data), bounds.request_fields, "LeafRequest")
    if len(data) < INSPECT_REQUEST_BYTES:
        return
    for number, wire_type, start, end in scan_fields(data, 0, len(data), bounds.request_fields):
        if number == _REQUEST_FEATURES and wire_type == WIRE_TYPE_LEN and end - start >= INSPECT_TENSOR_BYTES:
            body = field_body(data, start)
            check_field_count(data, body, end, _TENSOR_FIELDS, "a LeafRequest tensor")
            for inner, _, inner_start, inner_end in scan_fields(data, body, end, _TENSOR_FIELDS):
                if inner == _TENSOR_SHAPE and inner_end - field_body(data, inner_start) > bounds.shape_bytes:
                    raise TooManyFields(f"a LeafRequest tensor's shape holds more than {bounds.shape_bytes} bytes")


def _check_pack(data: bytes, start: int, end: int, bounds: FieldBounds) -> None:
    """Bound a ``TensorPack``'s names. Every ``names`` field begins with one tag byte, so that
    byte's count in the range bounds them (a C-speed count over headers of ~30 bytes per
    tensor); only where the count does not settle it are the fields counted."""
    if data.count(_PACK_NAMES_TAG, start, end) <= bounds.pack_names:
        return
    check_field_count(data, start, end, bounds.pack_names + _PACK_SINGLE_FIELDS, "TensorPack")


def split_partition(data: bytes, bounds: FieldBounds = DEFAULT_BOUNDS) -> tuple[bytes, memoryview] | None:
    """Bound a ``PartitionRequest``'s fields (``TooManyFields``), then return it without its
    pack's ``data`` field and a view of that field's payload; None when the request is not
    laid out as roots write it (one ``features`` field whose first field is ``data``): the
    caller then parses it whole. ``ValueError``/``IndexError`` for malformed bytes."""
    limit = bounds.partition_fields
    check_field_count(data, 0, len(data), limit, "PartitionRequest")
    top = scan_fields(data, 0, len(data), limit)
    for number, _, start, end in top:  # O(1) per model: the parser makes 4-8 bytes of an index byte
        if number == _PARTITION_MODELS and end - start > bounds.model_bytes:
            raise TooManyFields(f"a PartitionModel of {end - start} bytes, more than a valid one ({bounds.model_bytes})")
    features = [f for f in top if f[0] == _PARTITION_FEATURES]
    if len(features) > 1:  # the parser would merge them: one pack's bounds no longer hold
        raise TooManyFields("PartitionRequest holds more than one features field")
    if not features:
        return None
    _, wire_type, first, end = features[0]
    if wire_type != WIRE_TYPE_LEN:
        return None
    inner_start = field_body(data, first)
    if inner_start == end:
        return None
    key, pos = read_varint(data, inner_start)
    if key != (_PACK_DATA << 3) | WIRE_TYPE_LEN:
        _check_pack(data, inner_start, end, bounds)
        return None
    length, payload_start = read_varint(data, pos)
    payload_end = payload_start + length
    if payload_end > end:
        return None
    _check_pack(data, payload_end, end, bounds)
    small = b"".join(
        [data[f[2]:f[3]] for f in top if f[0] != _PARTITION_FEATURES]
        + [frame_field(_PARTITION_FEATURES, data[payload_end:end])]
    )
    return small, memoryview(data)[payload_start:payload_end]


def split_request(data: bytes) -> tuple[bytes, dict[int, memoryview]] | None:
    """A ``LeafRequest`` whose large tensors (``SPLIT_TENSOR_BYTES``) lack their ``data``
    field, and a view of each one's payload keyed by the tensor's position in ``features``;
    None when there is none to split, the request is small, has many fields, or is not laid
    out as expected (a tensor with two ``data`` fields): the caller then parses it whole.
    (``check_request`` bounds the fields first.)"""
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
                # A valid tensor has 6 fields: past a few more, the parser takes it whole.
                inner = scan_fields(data, body, end, MAX_SCANNED_FIELDS)
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
