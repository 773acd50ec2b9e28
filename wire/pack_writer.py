"""The root's side of tensor packs: encode a request's tensors once, assemble every
partition's ``PartitionRequest`` from them.

The root encodes (and compresses) a request's tensors once, column-wise, into a
``PackedBatch`` and assembles every partition's ``PartitionRequest`` from it by one
``bytes.join`` (``assemble_partition_batch``). The layout is ``wire.pack_format``'s; the leaf
reads it with ``wire.pack_reader``. ``TensorPacker`` is safe to share between threads (its
memo tables are only read and assigned).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, cast

import numpy as np

from contract.cache import BoundedCache
from protos.rootleaf.v1 import leaf_pb2
from wire.codec import CodecError, Compression, encode_payload, pack as pack_payload, wire_dtype
from wire.pack_format import ALIGN, DIM, ITEMSIZE, MAX_PACK_RANK, MAX_PACK_U32, RAW, RECORD, STORAGE
from wire.protowire import WIRE_TYPE_LEN, frame_field, tag, varint

_PADDING = tuple(bytes(i) for i in range(ALIGN))
_PACK_FIELDS = leaf_pb2.TensorPack.DESCRIPTOR.fields_by_name
_NAMES_FIELD = _PACK_FIELDS["names"].number
_FEATURES_FIELD = leaf_pb2.PartitionRequest.DESCRIPTOR.fields_by_name["features"].number
_FEATURES_TAG = tag(_FEATURES_FIELD, WIRE_TYPE_LEN)
_DATA_TAG = tag(_PACK_FIELDS["data"].number, WIRE_TYPE_LEN)
_TABLE_TAG = tag(_PACK_FIELDS["table"].number, WIRE_TYPE_LEN)
_DIMS_TAG = tag(_PACK_FIELDS["dims"].number, WIRE_TYPE_LEN)
# Batch tables kept per packer: one per distinct feature set in use (models x versions x
# client features).
_MAX_SCHEMAS = 256


@dataclass(frozen=True, slots=True, eq=False)  # identity hash: headers key schemas
class _Header:
    name_field: bytes
    dims: bytes
    rank: int
    dtype: int
    raw_size: int
    direct: bool
    """The array's dtype is the storage dtype and it has elements: its buffer is the payload."""


@dataclass(frozen=True, slots=True, eq=False)
class PackSchema:
    """What a batch of tensors keeps from request to request: per tensor (in batch order) its
    serialised ``names`` entry, dims, dtype, rank and decoded size."""

    name_fields: tuple[bytes, ...]
    dims: tuple[bytes, ...]
    dtypes: np.ndarray
    """uint8 wire dtypes."""
    ranks: np.ndarray
    """uint8."""
    raw_sizes: np.ndarray
    """int64 decoded sizes in bytes."""
    raw_size: int
    """Their sum."""


@dataclass(frozen=True, slots=True)
class PackedBatch:
    """Many tensors encoded once, column-wise, ready for any number of packs
    (``assemble_partition_batch``): one request's features at the root."""

    names: tuple[str, ...]
    schema: PackSchema
    payloads: list[bytes | memoryview | np.ndarray]
    """Per tensor: the LZ4 block, or the array itself (RAW; C-contiguous, its buffer is the payload)."""
    lengths: np.ndarray
    """int64 payload bytes per tensor."""
    encodings: np.ndarray
    """uint8 ``Encoding`` per tensor."""

    @property
    def raw_size(self) -> int:
        """Decoded bytes of every tensor."""
        return self.schema.raw_size


class TensorPacker:
    """Encodes a request's arrays as one ``PackedBatch`` with one compression setting.

    The serialised name, dims and dtype of each (name, dtype, shape) are kept between
    requests (at most ``max_headers``, ``contract.cache``'s policy), and so are the per-batch tables
    (``PackSchema``): a tensor costs a lookup and the LZ4 call, a repeat batch one lookup.
    """

    def __init__(self, compression: Compression | str = Compression.LZ4, *, max_headers: int = 16384) -> None:
        if max_headers < 1:
            raise ValueError(f"max_headers must be >= 1, got {max_headers}")
        self.compression = Compression(compression)
        self._headers: BoundedCache[tuple[str, np.dtype, tuple[int, ...]], _Header] = BoundedCache(max_headers)
        self._schemas: BoundedCache[tuple[_Header, ...], PackSchema] = BoundedCache(_MAX_SCHEMAS)

    def __len__(self) -> int:
        return len(self._headers)

    def _lookup(self, name: str, array: np.ndarray) -> _Header:
        key = (name, array.dtype, array.shape)
        header = self._headers.get(key)
        if header is None:
            header = self._header(name, array)
            self._headers.put(key, header)
        return header

    def _header(self, name: str, array: np.ndarray) -> _Header:
        try:
            dtype = wire_dtype(array.dtype)
        except ValueError as exc:
            raise CodecError(name, str(exc)) from None
        try:
            name_bytes = name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CodecError(name, f"name is not valid UTF-8: {exc.reason}") from None
        if not name_bytes:
            raise CodecError(name, "empty name")
        if array.ndim > MAX_PACK_RANK or any(dim > MAX_PACK_U32 for dim in array.shape):
            raise CodecError(name, f"shape {list(array.shape)} does not fit a pack (rank <= {MAX_PACK_RANK}, dims < 2**32)")
        raw_size = array.size * ITEMSIZE[dtype]
        if raw_size > MAX_PACK_U32:
            raise CodecError(name, f"{raw_size} bytes do not fit a pack entry (< 4 GiB)")
        return _Header(
            frame_field(_NAMES_FIELD, name_bytes),
            np.asarray(array.shape, dtype=DIM).tobytes(),
            array.ndim,
            dtype,
            raw_size,
            array.dtype == STORAGE[dtype] and raw_size > 0,
        )

    def pack_many(self, names: Sequence[str], arrays: Sequence[np.ndarray]) -> PackedBatch:
        """Encode ``arrays`` (adaptive LZ4 per ``compression``) column-wise: one header
        lookup, the LZ4 call and three appends per tensor; the batch's tables are kept per
        sequence of headers."""
        lookup = self._lookup
        compression = self.compression
        headers: list[_Header] = []
        payloads: list[bytes | memoryview | np.ndarray] = []
        lengths: list[int] = []
        encodings: list[int] = []
        for name, array in zip(names, arrays):
            header = lookup(name, array)
            headers.append(header)
            if header.direct and array.flags.c_contiguous:
                size = header.raw_size
                # the array is its own byte buffer (C-contiguous): no memoryview to make
                payload, encoding = pack_payload(cast(memoryview, array), size, compression)
                if encoding == RAW:
                    payloads.append(array)
                    lengths.append(size)
                else:
                    payloads.append(payload)
                    lengths.append(len(payload))
            else:  # byte-swapped, strided or empty arrays take the codec's general path
                encoded = encode_payload(name, array, compression, dtype=header.dtype)
                encoding = encoded.encoding
                payloads.append(encoded.data)
                lengths.append(len(encoded.data))
            encodings.append(encoding)
        key = tuple(headers)
        schema = self._schemas.get(key)
        if schema is None:
            schema = PackSchema(
                tuple([h.name_field for h in headers]),
                tuple([h.dims for h in headers]),
                np.array([h.dtype for h in headers], dtype=np.uint8),
                np.array([h.rank for h in headers], dtype=np.uint8),
                np.array([h.raw_size for h in headers], dtype=np.int64),
                sum([h.raw_size for h in headers]),
            )
            self._schemas.put(key, schema)
        return PackedBatch(
            tuple(names), schema, payloads, np.array(lengths, dtype=np.int64), np.array(encodings, dtype=np.uint8)
        )


@dataclass(frozen=True, slots=True)
class PartitionModelRef:
    """One model of a partition call: name, explicit version, indexes of its inputs."""

    name: str
    version: str
    features: tuple[int, ...]


def assemble_partition_request(
    request_id: str,
    num_candidates: int,
    models: Sequence[PartitionModelRef],
    batch: PackedBatch,
    sent: Sequence[int] | None = None,
) -> bytes:
    """The serialised ``PartitionRequest``: ``models`` and one pack of the batch's tensors at
    positions ``sent`` (all when None), in that order (``assemble_partition_batch``)."""
    header = leaf_pb2.PartitionRequest(request_id=request_id, num_candidates=num_candidates)
    for model in models:
        header.models.add(name=model.name, version=model.version, features=model.features)
    positions = np.arange(len(batch.names)) if sent is None else np.asarray(sent, dtype=np.intp)
    return assemble_partition_batch(header.SerializeToString(), batch, positions)


def assemble_partition_batch(header: bytes, batch: PackedBatch, sent: np.ndarray) -> bytes:
    """A serialised ``PartitionRequest`` from a batch: ``header`` is the request's serialised
    ``request_id``, ``num_candidates`` and ``models`` fields, ``sent`` the positions (intp,
    ascending or not) of the tensors the pack holds, in pack order. The
    table is built by numpy, the payloads are copied once (by the join). ``data`` comes
    first (protobuf accepts fields in any order): the leaf then finds the payload without
    scanning the names, and keeps it where gRPC received it."""
    count = len(sent)
    if not count:
        return b"".join([header, _FEATURES_TAG, varint(0)])
    schema = batch.schema
    lengths = batch.lengths[sent]
    aligned = (lengths + (ALIGN - 1)) & -ALIGN
    offsets = np.cumsum(aligned)
    offsets -= aligned
    table = np.zeros(count, dtype=RECORD)
    table["offset"] = offsets
    table["length"] = lengths
    table["dtype"] = schema.dtypes[sent]
    table["encoding"] = batch.encodings[sent]
    table["rank"] = schema.ranks[sent]
    table_bytes = table.tobytes()
    data_size = int(offsets[-1] + lengths[-1])
    positions = sent.tolist()
    pads = (aligned - lengths).tolist()
    pads[-1] = 0  # no padding after the last payload
    payloads = batch.payloads
    data: list[bytes | memoryview | np.ndarray] = [b""] * (2 * count)
    data[0::2] = [payloads[i] for i in positions]
    data[1::2] = [_PADDING[p] for p in pads]
    name_fields, all_dims = schema.name_fields, schema.dims
    names = b"".join([name_fields[i] for i in positions])
    dims = b"".join([all_dims[i] for i in positions])
    parts: list[bytes | memoryview | np.ndarray] = []
    size = len(names)
    if data_size:
        data_head = _DATA_TAG + varint(data_size)
        parts += (data_head, *data)
        size += len(data_head) + data_size
    parts.append(names)
    table_field = _TABLE_TAG + varint(len(table_bytes))
    parts += (table_field, table_bytes)
    size += len(table_field) + len(table_bytes)
    if dims:
        dims_field = _DIMS_TAG + varint(len(dims))
        parts += (dims_field, dims)
        size += len(dims_field) + len(dims)
    # numpy arrays are C-contiguous buffers here (the join reads them as bytes)
    return b"".join(cast("list[bytes]", [header, _FEATURES_TAG, varint(size), *parts]))


def encode_pack(arrays: dict[str, np.ndarray], compression: Compression | str = Compression.LZ4) -> leaf_pb2.TensorPack:
    """A ``TensorPack`` message holding ``arrays`` (tests and direct clients)."""
    batch = TensorPacker(compression).pack_many(list(arrays), list(arrays.values()))
    request = assemble_partition_batch(b"", batch, np.arange(len(arrays)))
    return leaf_pb2.PartitionRequest.FromString(request).features
