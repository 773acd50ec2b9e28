"""Pre-serialised tensors and request assembly by concatenation.

Protobuf's wire format lets a message be built by concatenating serialised fields, so the
root serialises (and compresses) each tensor once per request and assembles every model's
``LeafRequest`` from the same byte blocks: per-model trimming costs one ``bytes.join`` and
no re-encoding. The result is the exact bytes ``LeafRequest.SerializeToString`` would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from protos.rootleaf.v1 import leaf_pb2, tensor_pb2

_WIRE_TYPE_LEN = 2
LEAF_REQUEST_FEATURES_FIELD = leaf_pb2.LeafRequest.DESCRIPTOR.fields_by_name["features"].number


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def frame_field(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field: tag, length, payload."""
    return _varint((field_number << 3) | _WIRE_TYPE_LEN) + _varint(len(payload)) + payload


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


def assemble_leaf_request(header: leaf_pb2.LeafRequest, tensors: Iterable[EncodedTensor]) -> bytes:
    """Serialised ``LeafRequest``: ``header``'s scalar fields followed by ``tensors``.

    ``header`` must not carry features itself (they would be sent twice).
    """
    if len(header.features):
        raise ValueError("header must not contain features")
    return b"".join([header.SerializeToString(), *(t.framed for t in tensors)])
