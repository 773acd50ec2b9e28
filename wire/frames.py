"""Pre-serialised tensors and request assembly by concatenation.

Protobuf's wire format lets a message be built by concatenating serialised fields, so the
root serialises (and compresses) each tensor once per request and assembles every model's
``LeafRequest`` from the same byte blocks: per-model trimming costs one ``bytes.join`` and
no re-encoding. The result is the exact bytes ``LeafRequest.SerializeToString`` would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from contract.cache import BoundedCache
from wire.codec import (
    CodecError,
    Compression,
    Encoding,
    encode_payload,
    pack,
    numpy_dtype,
    wire_dtype,
)
from protos.rootleaf.v1 import leaf_pb2, tensor_pb2
from wire.protowire import WIRE_TYPE_LEN, WIRE_TYPE_VARINT, frame_field, tag, varint

LEAF_REQUEST_FEATURES_FIELD = leaf_pb2.LeafRequest.DESCRIPTOR.fields_by_name["features"].number


def _tag(field: str, wire_type: int) -> bytes:
    return tag(tensor_pb2.Tensor.DESCRIPTOR.fields_by_name[field].number, wire_type)


# Tags of the Tensor fields, in field-number order (the order protobuf serialises them in).
_TAG_NAME = _tag("name", WIRE_TYPE_LEN)
_TAG_DTYPE = _tag("dtype", WIRE_TYPE_VARINT)
_TAG_SHAPE = _tag("shape", WIRE_TYPE_LEN)  # packed repeated int64
_TAG_DATA = _tag("data", WIRE_TYPE_LEN)
_TAG_ENCODING = _tag("encoding", WIRE_TYPE_VARINT)
_TAG_RAW_SIZE = _tag("raw_size", WIRE_TYPE_VARINT)


@dataclass(frozen=True, slots=True)
class EncodedTensor:
    """A tensor serialised once, ready to be appended to any number of requests."""

    name: str
    framed: bytes
    """The ``features`` field of a ``LeafRequest`` holding this tensor (tag + length + message)."""
    raw_size: int
    """Decoded payload size in bytes (before compression)."""
    encoding: int
    """``Encoding`` of the payload."""

    @property
    def wire_size(self) -> int:
        return len(self.framed)

    @classmethod
    def from_tensor(
        cls, tensor: tensor_pb2.Tensor, field_number: int = LEAF_REQUEST_FEATURES_FIELD
    ) -> "EncodedTensor":
        return cls(
            name=tensor.name,
            framed=frame_field(field_number, tensor.SerializeToString()),
            raw_size=tensor.raw_size,
            encoding=tensor.encoding,
        )


def encode_framed(
    name: str,
    array: np.ndarray,
    compression: Compression | str = Compression.LZ4,
    *,
    field_number: int = LEAF_REQUEST_FEATURES_FIELD,
) -> EncodedTensor:
    """``EncodedTensor.from_tensor(codec.encode(name, array, compression))``, byte for byte,
    with the payload copied once.

    The ``Tensor`` is serialised by hand (proto3 rules: fields in number order, default
    values omitted), so the payload goes from the array (RAW) or the LZ4 block straight
    into the framed bytes instead of through a message and its serialisation.
    """
    payload = encode_payload(name, array, compression)
    try:
        name_bytes = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CodecError(name, f"name is not valid UTF-8: {exc.reason}") from None
    parts: list[bytes | memoryview] = []
    if name_bytes:
        parts += (_TAG_NAME, varint(len(name_bytes)), name_bytes)
    parts += (_TAG_DTYPE, varint(payload.dtype))
    if array.ndim:
        shape = b"".join([varint(dim) for dim in array.shape])
        parts += (_TAG_SHAPE, varint(len(shape)), shape)
    data = payload.data
    if len(data):
        parts += (_TAG_DATA, varint(len(data)), data)
    if payload.encoding:
        parts += (_TAG_ENCODING, varint(payload.encoding))
    if payload.raw_size:
        parts += (_TAG_RAW_SIZE, varint(payload.raw_size))
    size = sum([len(part) for part in parts])
    framed = b"".join([tag(field_number, WIRE_TYPE_LEN), varint(size), *parts])
    return EncodedTensor(name, framed, payload.raw_size, payload.encoding)


_LZ4 = int(Encoding.LZ4)
_RAW = int(Encoding.RAW)


@dataclass(frozen=True, slots=True)
class _Header:
    """What ``TensorFramer`` caches per (name, dtype, shape)."""

    prefix: bytes
    """The name, dtype and shape fields."""
    raw_size: int
    raw_tail: bytes
    """The fields after ``data`` for a RAW payload (``raw_size``)."""
    lz4_tail: bytes
    """The fields after ``data`` for an LZ4 payload (``encoding``, ``raw_size``)."""


class TensorFramer:
    """``encode_framed`` for a stream of tensors whose names and shapes repeat.

    The root encodes the same features request after request; the serialised name, dtype
    and shape fields of each (name, dtype, shape) are kept (at most ``max_headers``,
    ``contract.cache``'s policy), so a tensor costs a dictionary lookup, the LZ4 call and
    one ``bytes.join``. Output is byte-identical to ``encode_framed``. Safe to share
    between threads (a lost race recomputes a header).
    """

    def __init__(
        self,
        compression: Compression | str = Compression.LZ4,
        *,
        field_number: int = LEAF_REQUEST_FEATURES_FIELD,
        max_headers: int = 16384,
    ) -> None:
        if max_headers < 1:
            raise ValueError(f"max_headers must be >= 1, got {max_headers}")
        self.compression = Compression(compression)
        self._field_tag = tag(field_number, WIRE_TYPE_LEN)
        self._field_number = field_number
        self._headers: BoundedCache[tuple[str, np.dtype, tuple[int, ...]], _Header] = BoundedCache(max_headers)

    def __len__(self) -> int:
        """Headers cached now."""
        return len(self._headers)

    def _header(self, name: str, array: np.ndarray) -> _Header | None:
        """The cacheable header, or None for tensors the generic path handles."""
        try:
            dtype = wire_dtype(array.dtype)
        except ValueError:
            return None
        storage = numpy_dtype(dtype)
        if array.ndim == 0 or array.size == 0 or array.dtype != storage:
            return None
        try:
            name_bytes = name.encode("utf-8")
        except UnicodeEncodeError:
            return None
        shape = b"".join([varint(dim) for dim in array.shape])
        name_field = (_TAG_NAME, varint(len(name_bytes)), name_bytes) if name_bytes else ()
        prefix = b"".join([*name_field, _TAG_DTYPE, varint(dtype), _TAG_SHAPE, varint(len(shape)), shape])
        raw_size = array.size * storage.itemsize
        size_field = _TAG_RAW_SIZE + varint(raw_size)
        return _Header(prefix, raw_size, size_field, _TAG_ENCODING + varint(_LZ4) + size_field)

    def frame(self, name: str, array: np.ndarray) -> EncodedTensor:
        """``encode_framed(name, array, self.compression)``."""
        key = (name, array.dtype, array.shape)
        header = self._headers.get(key)
        if header is None:
            header = self._header(name, array)
            if header is None:
                return encode_framed(name, array, self.compression, field_number=self._field_number)
            self._headers.put(key, header)
        buffer = (array if array.flags.c_contiguous else np.ascontiguousarray(array)).data
        size = header.raw_size
        data, encoding = pack(buffer, size, self.compression)
        # A RAW buffer is the array's (possibly multi-dimensional) memoryview: its byte
        # length is the header's size, not len().
        length = size if encoding == _RAW else len(data)
        tail = header.lz4_tail if encoding == _LZ4 else header.raw_tail
        length_bytes = varint(length)
        prefix = header.prefix
        body = len(prefix) + 1 + len(length_bytes) + length + len(tail)
        framed = b"".join([self._field_tag, varint(body), prefix, _TAG_DATA, length_bytes, data, tail])
        return EncodedTensor(name, framed, size, encoding)


def assemble_leaf_request(header: leaf_pb2.LeafRequest, tensors: Iterable[EncodedTensor]) -> bytes:
    """Serialised ``LeafRequest``: ``header``'s scalar fields followed by ``tensors``.

    ``header`` must not carry features itself (they would be sent twice).
    """
    if len(header.features):
        raise ValueError("header must not contain features")
    return b"".join([header.SerializeToString(), *(t.framed for t in tensors)])
