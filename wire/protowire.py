"""Protobuf's wire format, the part rootleaf writes and reads by hand.

The root assembles requests by concatenating serialised fields (``wire.frames``,
``wire.pack_writer``) and the leaf finds large payload fields in received bytes without parsing
them (``leaf.payload_views``). Both use these primitives: varints, field tags,
length-delimited fields and a scan of a message's fields. Pure functions.
"""

from __future__ import annotations

WIRE_TYPE_VARINT = 0
WIRE_TYPE_I64 = 1
WIRE_TYPE_LEN = 2
WIRE_TYPE_I32 = 5
_SINGLE_BYTE = tuple(bytes((i,)) for i in range(0x80))


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a base-128 varint."""
    if value < 0x80:
        return _SINGLE_BYTE[value]
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(field_number: int, wire_type: int) -> bytes:
    """A field's key: its number and wire type."""
    return varint((field_number << 3) | wire_type)


def frame_field(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field: tag, length, payload."""
    return tag(field_number, WIRE_TYPE_LEN) + varint(len(payload)) + payload


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; ``IndexError`` when ``buf`` ends
    inside it, ``ValueError`` past 64 bits."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def scan_fields(
    buf: bytes | memoryview, start: int, end: int, limit: int | None = None
) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, field start, field end) of each field in ``buf[start:end]``,
    in order; ``ValueError`` for a truncated field, an unknown wire type or more than
    ``limit`` fields, ``IndexError`` for a truncated varint."""
    out: list[tuple[int, int, int, int]] = []
    pos = start
    while pos < end:
        if limit is not None and len(out) >= limit:
            raise ValueError("too many fields to scan")
        first = pos
        key, pos = read_varint(buf, pos)
        wire_type = key & 7
        if wire_type == WIRE_TYPE_VARINT:
            _, pos = read_varint(buf, pos)
        elif wire_type == WIRE_TYPE_LEN:
            length, pos = read_varint(buf, pos)
            pos += length
        elif wire_type == WIRE_TYPE_I64:
            pos += 8
        elif wire_type == WIRE_TYPE_I32:
            pos += 4
        else:
            raise ValueError(f"wire type {wire_type}")
        if pos > end:
            raise ValueError("truncated field")
        out.append((key >> 3, wire_type, first, pos))
    return out


def field_body(buf: bytes | memoryview, field_start: int) -> int:
    """Where the payload of the length-delimited field starting at ``field_start`` begins."""
    _, pos = read_varint(buf, field_start)
    _, pos = read_varint(buf, pos)
    return pos


def count_fields(buf: bytes | memoryview, start: int, end: int, limit: int) -> int:
    """How many fields ``buf[start:end]`` holds, counting no further than ``limit + 1``: the
    work is O(min(fields, limit)) whatever the message's size. ``ValueError`` for a
    truncated field or an unknown wire type met on the way, ``IndexError`` for a truncated
    varint (what ``scan_fields`` raises, without a tuple per field)."""
    count = 0
    pos = start
    while pos < end:
        if count > limit:
            return count
        key = buf[pos]
        pos += 1
        if key >= 0x80:
            key, pos = read_varint(buf, pos - 1)
        wire_type = key & 7
        if wire_type == WIRE_TYPE_LEN:
            length = buf[pos]
            pos += 1
            if length >= 0x80:
                length, pos = read_varint(buf, pos - 1)
            pos += length
        elif wire_type == WIRE_TYPE_VARINT:
            _, pos = read_varint(buf, pos)
        elif wire_type == WIRE_TYPE_I64:
            pos += 8
        elif wire_type == WIRE_TYPE_I32:
            pos += 4
        else:
            raise ValueError(f"wire type {wire_type}")
        count += 1
    if pos > end:
        raise ValueError("truncated field")
    return count
