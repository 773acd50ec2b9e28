"""Tensor codec: numpy arrays <-> ``rootleaf.v1.Tensor``, with adaptive per-tensor LZ4.

Encoding happens once per tensor per request; the resulting message (or its serialised
bytes, see ``wire.frames``) is reused for every model that needs it. Decoding treats the
message as untrusted: every size is checked against ``DecodeLimits`` before anything is
allocated or decompressed, and every violation raises ``CodecError`` naming the tensor.

LZ4 is the block format (no frame header) because ``raw_size`` already carries the
decompressed length: measured on 600 KB of sparse float32, block and frame run at the same
speed (~0.44 GB/s compress, ~2 GB/s decompress on one core) but a frame costs ~20 bytes more
per tensor, which adds up over hundreds of small features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Sequence, TypeVar, cast

import lz4.block
import numpy as np

from contract.dtypes import DTYPES
from protos.rootleaf.v1 import tensor_pb2

Tensor = tensor_pb2.Tensor
DType = tensor_pb2.DType
Encoding = tensor_pb2.Encoding

# Wire dtype -> numpy storage dtype, from the contract's dtype table (enum = name upper-cased).
DTYPE_BY_NAME: dict[str, int] = {name: DType.Value(name.upper()) for name in DTYPES}
"""Dtype name (``contract.dtypes``) -> ``rootleaf.v1.DType`` value."""
_NUMPY_BY_DTYPE: dict[int, np.dtype] = {DTYPE_BY_NAME[name]: storage for name, storage in DTYPES.items()}
_DTYPE_BY_NUMPY: dict[np.dtype, int] = {
    np.dtype(t).newbyteorder("="): d
    for d, t in _NUMPY_BY_DTYPE.items()
    if d != DType.BFLOAT16
}


class Compression(str, Enum):
    """How ``encode`` treats the payload."""

    NONE = "none"  # always RAW
    LZ4 = "lz4"  # adaptive: LZ4 when it clearly pays, else RAW
    LZ4_ALWAYS = "lz4_always"  # LZ4 whatever the ratio (benchmarks only)


# Below this many raw bytes LZ4 is skipped: a 64-byte sparse float32 block saves under 30
# bytes while the call costs about a microsecond (mostly request-level scalars fall here).
MIN_COMPRESS_BYTES = 64
# LZ4 output must be at most this fraction of the raw size to be kept; otherwise the
# decompression CPU at the leaf buys too little.
MAX_COMPRESSED_RATIO = 0.9


class CodecError(ValueError):
    """A tensor could not be encoded or decoded; names the tensor and the reason."""

    def __init__(self, tensor: str, reason: str) -> None:
        super().__init__(f"tensor {tensor!r}: {reason}")
        self.tensor = tensor
        self.reason = reason


class OverLimit(CodecError):
    """A well-formed header declares more than a ``DecodeLimits`` bound allows."""


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds applied to untrusted tensors before any allocation."""

    max_raw_bytes: int = 256 * 1024 * 1024
    """Largest decoded size of one tensor."""
    max_total_raw_bytes: int = 1024 * 1024 * 1024
    """Largest decoded size of all tensors of one message."""
    max_tensors: int = 4096
    """Most tensors in one message."""
    max_name_length: int = 256
    """Longest tensor name, in characters."""
    max_rank: int = 8
    """Most dimensions of one tensor."""

    def __post_init__(self) -> None:
        for field in ("max_raw_bytes", "max_total_raw_bytes", "max_tensors", "max_name_length", "max_rank"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DecodeLimits.{field} must be a positive int, got {value!r}")


DEFAULT_LIMITS = DecodeLimits()


def largest_tensors_bytes(limits: DecodeLimits, count: int, raw_bytes: int) -> int:
    """The most bytes ``count`` valid tensors decoding to ``raw_bytes`` in all can take on the
    wire: payloads (LZ4 of incompressible data grows by 1/255 and a few bytes) plus, per
    tensor, its field tags and lengths, a name of ``max_name_length`` 4-byte characters,
    ``max_rank`` 10-byte dims, dtype, encoding and raw_size. What message limits derive from."""
    header = 4 * limits.max_name_length + 10 * limits.max_rank + 48
    return raw_bytes + raw_bytes // 255 + count * (header + 16)
_RAW = int(Encoding.RAW)
_LZ4 = int(Encoding.LZ4)

_Sizes = TypeVar("_Sizes", int, np.ndarray)


def lz4_can_decode(length: _Sizes, size: _Sizes) -> _Sizes:
    """Whether ``length`` bytes of LZ4 block can decode to ``size`` bytes (element-wise for
    arrays). LZ4 expands at most ~255x; a tiny block claiming a huge size is a bomb."""
    return length * 255 + 16 >= size


def numpy_dtype(dtype: int) -> np.dtype:
    """The numpy storage dtype of a wire dtype (bfloat16 -> uint16 words)."""
    try:
        return _NUMPY_BY_DTYPE[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype enum value {dtype}") from None


def wire_dtype(array_dtype: np.dtype) -> int:
    """The wire dtype of a numpy dtype; raises ``ValueError`` for unsupported ones."""
    # Native little-endian dtypes hit the table directly (hashing a dtype is cheap; building
    # the byte-swapped variant costs about a microsecond, once per tensor on the hot path).
    found = _DTYPE_BY_NUMPY.get(array_dtype)
    if found is not None:
        return found
    try:
        return _DTYPE_BY_NUMPY[np.dtype(array_dtype).newbyteorder("=")]
    except KeyError:
        raise ValueError(f"unsupported numpy dtype {array_dtype}") from None


@dataclass(frozen=True, slots=True)
class Payload:
    """A tensor's encoded payload before it is put in a message (see ``wire.frames``)."""

    dtype: int
    """Wire ``DType``."""
    data: bytes | memoryview
    """The bytes of the ``data`` field: the LZ4 block, or a view of the array's own buffer."""
    encoding: int
    """``Encoding`` of ``data``."""
    raw_size: int
    """Decoded size in bytes."""


def encode_payload(
    name: str,
    array: np.ndarray,
    compression: Compression | str = Compression.LZ4,
    *,
    dtype: int | None = None,
) -> Payload:
    """The payload ``encode`` would put in the message, without copying a RAW payload.

    A RAW payload is a byte view of ``array`` (made contiguous little-endian first when it
    is not), so the caller must not modify ``array`` while the payload is in use.
    """
    compression = Compression(compression)
    if dtype is None:
        try:
            dtype = wire_dtype(array.dtype)
        except ValueError as exc:
            raise CodecError(name, str(exc)) from None
    storage = numpy_dtype(dtype)
    if array.dtype.itemsize != storage.itemsize or array.dtype.kind != storage.kind:
        raise CodecError(name, f"array dtype {array.dtype} does not store {DType.Name(dtype)}")
    contiguous = np.ascontiguousarray(array, dtype=storage)
    # A flat byte view of the array's buffer (memoryview refuses to cast 0-d and empty views).
    raw = memoryview(contiguous.reshape(-1).data).cast("B") if contiguous.size else memoryview(b"")
    data, encoding = pack(raw, len(raw), compression)
    return Payload(dtype, data, encoding, len(raw))


def pack(raw: memoryview, size: int, compression: Compression) -> tuple[bytes | memoryview, int]:
    """The adaptive encoding decision: ``(data, encoding)`` for ``size`` raw bytes in ``raw``.

    LZ4 when it clearly pays (at least ``MIN_COMPRESS_BYTES``, output at most
    ``MAX_COMPRESSED_RATIO`` of the input) or always with ``LZ4_ALWAYS``; else ``raw`` itself.
    """
    if compression is not Compression.NONE and (
        compression is Compression.LZ4_ALWAYS or size >= MIN_COMPRESS_BYTES
    ):
        packed = lz4.block.compress(raw, store_size=False)
        if compression is Compression.LZ4_ALWAYS or len(packed) <= MAX_COMPRESSED_RATIO * size:
            return packed, _LZ4
    return raw, _RAW


def encode(
    name: str,
    array: np.ndarray,
    compression: Compression | str = Compression.LZ4,
    *,
    dtype: int | None = None,
) -> Tensor:
    """Encode ``array`` as a ``Tensor`` named ``name``.

    ``dtype`` overrides the wire dtype (only needed for bfloat16 carried as uint16 words).
    """
    payload = encode_payload(name, array, compression, dtype=dtype)
    return Tensor(
        name=name,
        dtype=cast(DType, payload.dtype),
        shape=array.shape,
        raw_size=payload.raw_size,
        data=bytes(payload.data),
        encoding=cast(Encoding, payload.encoding),
    )


def expected_raw_size(tensor: Tensor, limits: DecodeLimits = DEFAULT_LIMITS) -> int:
    """Validate the header of an untrusted tensor and return its decoded size in bytes."""
    name = tensor.name
    if len(name) > limits.max_name_length:
        raise CodecError(name[:64] + "...", f"name longer than {limits.max_name_length} characters")
    if not name:
        raise CodecError(name, "empty name")
    if tensor.dtype not in _NUMPY_BY_DTYPE:
        raise CodecError(name, f"unknown dtype enum value {tensor.dtype}")
    if len(tensor.shape) > limits.max_rank:
        raise CodecError(name, f"rank {len(tensor.shape)} exceeds {limits.max_rank}")
    itemsize = _NUMPY_BY_DTYPE[tensor.dtype].itemsize
    count = 1
    for dim in tensor.shape:
        if dim < 0:
            raise CodecError(name, f"negative dimension in shape {list(tensor.shape)}")
        count *= dim
        # Python ints do not overflow, but stop early on absurd shapes.
        if count * itemsize > limits.max_raw_bytes:
            raise OverLimit(
                name, f"shape {list(tensor.shape)} exceeds the {limits.max_raw_bytes}-byte limit"
            )
    size = count * itemsize
    if not size:
        problem = empty_shape_problem(tensor.shape, itemsize, limits.max_raw_bytes)
        if problem:
            raise OverLimit(name, problem)
    if tensor.raw_size != size:
        raise CodecError(name, f"raw_size {tensor.raw_size} != {size} implied by shape and dtype")
    return size


def empty_shape_problem(shape: Sequence[int], itemsize: int, max_raw_bytes: int) -> str:
    """For a shape with no elements (a zero dim), why it is refused, else "": its other dims
    may not describe more than ``max_raw_bytes`` either. numpy refuses such a shape ("array
    is too big") once they pass its index range, and no valid tensor is that wide."""
    extent = itemsize
    for dim in shape:
        if dim:
            extent *= dim
            if extent > max_raw_bytes:
                return f"shape {list(shape)}: its non-zero dims exceed the {max_raw_bytes}-byte limit"
    return ""


def decode(tensor: Tensor, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode an untrusted tensor into a read-only numpy array (zero-copy for RAW).

    Hot path (the leaf decodes hundreds of features per request): each field is read once
    and a well-formed tensor passes the same checks as ``expected_raw_size`` in a few
    comparisons; anything else takes the checked path below, which names the problem.
    """
    storage = _NUMPY_BY_DTYPE.get(tensor.dtype)
    shape = tuple(tensor.shape)
    name = tensor.name
    if (
        storage is not None
        and 0 < len(name) <= limits.max_name_length
        and len(shape) <= limits.max_rank
        and (not shape or min(shape) >= 0)
    ):
        size = math.prod(shape) * storage.itemsize
        if 0 < size <= limits.max_raw_bytes and tensor.raw_size == size:
            data = tensor.data
            encoding = tensor.encoding
            if encoding == _RAW and len(data) == size:
                return np.ndarray(shape, storage, data)  # a read-only view of the bytes
            if encoding == _LZ4 and lz4_can_decode(len(data), size):
                try:
                    raw = lz4.block.decompress(data, uncompressed_size=size)
                except lz4.block.LZ4BlockError:
                    raw = b""  # reported by the checked path
                if len(raw) == size:
                    return np.ndarray(shape, storage, raw)
    return _decode_checked(tensor, limits)


def decode_payload(
    tensor: Tensor,
    shape: tuple[int, ...],
    size: int,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    data: bytes | memoryview | None = None,
) -> np.ndarray:
    """``decode`` for a tensor whose header the caller already validated (its ``shape`` and
    decoded ``size`` as ``expected_raw_size`` accepts them): only the payload is checked.

    The leaf admits requests on their headers before decoding; this spares it reading and
    checking every header twice. Anything unexpected takes ``decode``'s checked path.
    ``data`` is the tensor's payload when it was parsed without it (``tensor.data`` is read
    otherwise).
    """
    if data is None:
        data = tensor.data
    encoding = tensor.encoding
    storage = _NUMPY_BY_DTYPE[tensor.dtype]
    if encoding == _RAW and len(data) == size:
        return np.ndarray(shape, storage, data)
    if encoding == _LZ4 and size and lz4_can_decode(len(data), size):
        try:
            raw = lz4.block.decompress(data, uncompressed_size=size)
        except lz4.block.LZ4BlockError:
            raw = b""  # reported by the checked path
        if len(raw) == size:
            return np.ndarray(shape, storage, raw)
    return _decode_checked(tensor, limits, data)


def _decode_checked(tensor: Tensor, limits: DecodeLimits, data: bytes | memoryview | None = None) -> np.ndarray:
    size = expected_raw_size(tensor, limits)
    name = tensor.name
    if data is None:
        data = tensor.data
    if tensor.encoding == Encoding.RAW:
        if len(data) != size:
            raise CodecError(name, f"data length {len(data)} != raw_size {size}")
        raw = data
    elif tensor.encoding == Encoding.LZ4:
        if size == 0:
            raw = b""
        else:
            if not lz4_can_decode(len(data), size):
                raise CodecError(name, f"{len(data)} LZ4 bytes cannot decode to {size} bytes")
            try:
                raw = lz4.block.decompress(data, uncompressed_size=size)
            except lz4.block.LZ4BlockError as exc:
                raise CodecError(name, f"corrupt LZ4 data: {exc}") from None
            if len(raw) != size:
                raise CodecError(name, f"LZ4 data decoded to {len(raw)} bytes, expected {size}")
    else:
        raise CodecError(name, f"unknown encoding enum value {tensor.encoding}")
    array = np.frombuffer(raw, dtype=_NUMPY_BY_DTYPE[tensor.dtype])
    return array.reshape(tuple(tensor.shape))


def decode_all(
    tensors: Sequence[Tensor], limits: DecodeLimits = DEFAULT_LIMITS
) -> dict[str, np.ndarray]:
    """Decode a message's tensors by name, enforcing count, total size and unique names."""
    if len(tensors) > limits.max_tensors:
        raise OverLimit("*", f"{len(tensors)} tensors exceed the limit of {limits.max_tensors}")
    total = 0
    for tensor in tensors:
        total += expected_raw_size(tensor, limits)
        if total > limits.max_total_raw_bytes:
            raise OverLimit(tensor.name, f"total size exceeds {limits.max_total_raw_bytes} bytes")
    out: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if tensor.name in out:
            raise CodecError(tensor.name, "duplicate tensor name")
        out[tensor.name] = decode(tensor, limits)
    return out


def wire_size(tensors: Iterable[Tensor]) -> int:
    """Serialised size of the tensors as they travel (after compression)."""
    return sum(t.ByteSize() for t in tensors)
