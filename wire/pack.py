"""Tensor packs: many tensors in one ``TensorPack`` message, no message per tensor.

A pack is the tensors' names, a fixed-width table (offset, length, dtype, encoding, rank),
their dims, and one ``data`` field with every payload back to back, each at a multiple of 8
bytes so a RAW payload is an aligned zero-copy view. The root encodes (and compresses)
a request's tensors once, column-wise, into a ``PackedBatch`` and assembles every
partition's ``PartitionRequest`` from it by one ``bytes.join`` (``assemble_partition_batch``). The
leaf reads the table in one pass (``read_pack``), checking every declared size against
``DecodeLimits`` before anything is decompressed or allocated, and decodes each entry once
(``decode_entry``); ``PackReader`` does those header checks once per distinct header.
Pure functions; ``TensorPacker`` is safe to share between threads (its header table is only
read and assigned); a ``PackReader`` belongs to one thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence, cast

import lz4.block
import numpy as np

from protos.rootleaf.v1 import leaf_pb2
from wire.codec import (
    CodecError,
    Compression,
    DecodeLimits,
    DType,
    Encoding,
    empty_shape_problem,
    encode_payload,
    numpy_dtype,
    pack as pack_payload,
    wire_dtype,
)
from wire.protowire import WIRE_TYPE_LEN, frame_field, tag, varint

RECORD = np.dtype(
    [("offset", "<u4"), ("length", "<u4"), ("dtype", "u1"), ("encoding", "u1"), ("rank", "u1"), ("reserved", "u1")]
)
"""One table record (little-endian, no padding)."""
RECORD_BYTES = RECORD.itemsize
ALIGN = 8
_PADDING = tuple(bytes(i) for i in range(ALIGN))
_RAW = int(Encoding.RAW)
_LZ4 = int(Encoding.LZ4)
_ITEMSIZE = {int(d): np.dtype(numpy_dtype(int(d))).itemsize for d in DType.values() if d != DType.DTYPE_UNSPECIFIED}
_STORAGE = {d: numpy_dtype(d) for d in _ITEMSIZE}

_PACK_FIELDS = leaf_pb2.TensorPack.DESCRIPTOR.fields_by_name
_NAMES_FIELD = _PACK_FIELDS["names"].number
_TABLE_FIELD = _PACK_FIELDS["table"].number
_DIMS_FIELD = _PACK_FIELDS["dims"].number
_DATA_FIELD = _PACK_FIELDS["data"].number
_FEATURES_FIELD = leaf_pb2.PartitionRequest.DESCRIPTOR.fields_by_name["features"].number
_FEATURES_TAG = tag(_FEATURES_FIELD, WIRE_TYPE_LEN)
_DATA_TAG = tag(_DATA_FIELD, WIRE_TYPE_LEN)
_TABLE_TAG = tag(_TABLE_FIELD, WIRE_TYPE_LEN)
_DIMS_TAG = tag(_DIMS_FIELD, WIRE_TYPE_LEN)
# Batch tables kept per packer: one per distinct feature set in use (models x versions x
# client features); cleared when full.
_MAX_SCHEMAS = 256


# ---- root side: encode once, assemble per partition ---------------------------------------


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
    requests (at most ``max_headers``; cleared when full), and so are the per-batch tables
    (``PackSchema``): a tensor costs a lookup and the LZ4 call, a repeat batch one lookup.
    """

    def __init__(self, compression: Compression | str = Compression.LZ4, *, max_headers: int = 16384) -> None:
        if max_headers < 1:
            raise ValueError(f"max_headers must be >= 1, got {max_headers}")
        self.compression = Compression(compression)
        self._max_headers = max_headers
        self._headers: dict[tuple[str, np.dtype, tuple[int, ...]], _Header] = {}
        self._schemas: dict[tuple[_Header, ...], PackSchema] = {}

    def __len__(self) -> int:
        return len(self._headers)

    def _lookup(self, name: str, array: np.ndarray) -> _Header:
        key = (name, array.dtype, array.shape)
        header = self._headers.get(key)
        if header is None:
            header = self._header(name, array)
            if len(self._headers) >= self._max_headers:
                self._headers.clear()
                self._schemas.clear()
            self._headers[key] = header
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
        if array.ndim > 255 or any(dim > 0xFFFFFFFF for dim in array.shape):
            raise CodecError(name, f"shape {list(array.shape)} does not fit a pack (rank <= 255, dims < 2**32)")
        raw_size = array.size * _ITEMSIZE[dtype]
        if raw_size > 0xFFFFFFFF:
            raise CodecError(name, f"{raw_size} bytes do not fit a pack entry (< 4 GiB)")
        return _Header(
            frame_field(_NAMES_FIELD, name_bytes),
            np.asarray(array.shape, dtype="<u4").tobytes(),
            array.ndim,
            dtype,
            raw_size,
            array.dtype == _STORAGE[dtype] and raw_size > 0,
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
                if encoding == _RAW:
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
            if len(self._schemas) >= _MAX_SCHEMAS:
                self._schemas.clear()
            self._schemas[key] = schema
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


# ---- leaf side: read the table, decode each entry once ------------------------------------


class PackEntry(NamedTuple):
    """One tensor of a received pack, validated on its header; the payload is untouched.
    (A named tuple: the leaf makes one per feature per request, and it is the cheapest.)"""

    name: str
    dtype: int
    shape: tuple[int, ...]
    raw_size: int
    encoding: int
    offset: int
    length: int


def read_pack(pack: leaf_pb2.TensorPack, limits: DecodeLimits, data_size: int | None = None) -> list[PackEntry]:
    """Validate an untrusted pack's table against ``limits`` (sizes, ranks, dtypes, payload
    bounds and alignment, unique names, total decoded size) without decoding any payload.
    Raises ``CodecError`` naming the entry at fault. ``data_size`` is ``len(pack.data)``
    when the caller already holds the data (reading the field copies it).

    One pass in plain Python over the table's tuples: for the ~100-1000 entries of a request
    it is cheaper than numpy's per-call overhead on a dozen vectorised checks.
    """
    names = pack.names
    count = len(names)
    if count > limits.max_tensors:
        raise CodecError("*", f"{count} tensors exceed the limit of {limits.max_tensors}")
    table = pack.table
    if len(table) != count * RECORD_BYTES:
        raise CodecError("*", f"table of {len(table)} bytes does not hold {count} records of {RECORD_BYTES}")
    dims_bytes = pack.dims
    if len(dims_bytes) % 4:
        raise CodecError("*", f"dims of {len(dims_bytes)} bytes is not a whole number of uint32")
    if data_size is None:
        data_size = len(pack.data)
    table_records = np.frombuffer(table, dtype=RECORD)
    # The dims' count against the ranks before any dim becomes a Python int.
    ranks = int(table_records["rank"].sum(dtype=np.int64))
    if len(dims_bytes) // 4 != ranks:
        raise CodecError("*", f"dims hold {len(dims_bytes) // 4} values, the ranks need {ranks}")
    records = table_records.tolist()
    dims = np.frombuffer(dims_bytes, dtype="<u4").tolist()
    entries: list[PackEntry] = []
    seen: set[str] = set()
    position = end = total = 0
    max_name, max_rank, max_raw = limits.max_name_length, limits.max_rank, limits.max_raw_bytes
    max_total = limits.max_total_raw_bytes
    itemsizes = _ITEMSIZE
    for name, (offset, length, dtype, encoding, rank, _reserved) in zip(names, records):
        if not 0 < len(name) <= max_name:
            shown = name[:64] + "..." if name else name
            raise CodecError(shown, "empty name" if not name else f"name longer than {max_name} characters")
        if name in seen:
            raise CodecError(name, "duplicate tensor name")
        seen.add(name)
        itemsize = itemsizes.get(dtype)
        if itemsize is None:
            raise CodecError(name, f"unknown dtype enum value {dtype}")
        if rank > max_rank:
            raise CodecError(name, f"rank {rank} exceeds {max_rank}")
        following = position + rank  # within dims: their count equals the ranks' sum
        shape = tuple(dims[position:following])
        position = following
        size = math.prod(shape) * itemsize
        if size > max_raw:
            raise CodecError(name, f"shape {list(shape)} exceeds the {max_raw}-byte limit")
        if not size and rank:
            problem = empty_shape_problem(shape, itemsize, max_raw)
            if problem:
                raise CodecError(name, problem)
        total += size
        if total > max_total:
            raise CodecError(name, f"total size exceeds {max_total} bytes")
        if encoding == _RAW:
            if length != size:
                raise CodecError(name, f"data length {length} != raw_size {size}")
        elif encoding == _LZ4:
            # LZ4 expands at most ~255x; a tiny block claiming a huge size is a bomb.
            if length * 255 + 16 < size:
                raise CodecError(name, f"{length} LZ4 bytes cannot decode to {size} bytes")
        else:
            raise CodecError(name, f"unknown encoding enum value {encoding}")
        if offset % ALIGN or offset < end or offset + length > data_size:
            raise CodecError(name, f"payload [{offset}, {offset + length}) is misaligned, overlaps or "
                                   f"lies outside the {data_size}-byte data")
        end = offset + length
        entries.append(PackEntry(name, dtype, shape, size, encoding, offset, length))
    return entries


@dataclass(frozen=True, slots=True, eq=False)
class PackLayout:
    """What a pack's names, dtypes, ranks and dims determine, validated once. Packs with the
    same header share one (compared by identity: it keys the leaf's admission caches)."""

    names: tuple[str, ...]
    dtypes: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...]
    """Decoded bytes of each entry."""
    size_array: np.ndarray
    """``sizes`` as int64, for the vectorised payload checks."""
    kept: bool = False
    """Kept by a ``PackReader``: caches may key on it (one not kept is new every request,
    and keeping what derives from it would only churn them)."""


@dataclass(frozen=True, slots=True)
class PackTable:
    """A received pack's table, validated: its layout and each entry's payload placement."""

    layout: PackLayout
    offsets: list[int]
    lengths: list[int]
    encodings: list[int]

    def __len__(self) -> int:
        return len(self.offsets)

    def entry(self, index: int) -> PackEntry:
        layout = self.layout
        return PackEntry(
            layout.names[index], layout.dtypes[index], layout.shapes[index], layout.sizes[index],
            self.encodings[index], self.offsets[index], self.lengths[index],
        )

    def entries(self) -> list[PackEntry]:
        return [self.entry(i) for i in range(len(self.offsets))]


class PackReader:
    """``read_pack`` with the header checks done once per distinct header.

    Requests for the same models carry the same names, dtypes and dims; what those determine
    (every name, dtype, rank and size check) is validated by ``read_pack`` the first time and
    kept under the exact header (at most ``max_layouts``, cleared when full; a header whose
    names exceed ``max_kept_chars`` is never kept, so what a client can make the leaf hold is
    bounded). A repeat header then costs a dict lookup and a handful of numpy comparisons
    over the table's offsets, lengths and encodings; any failure there reruns ``read_pack``
    for its exact error (same entry, same message). Owned by one thread (the leaf's event
    loop).
    """

    def __init__(self, limits: DecodeLimits, *, max_layouts: int = 64, max_kept_chars: int = 1 << 18) -> None:
        if max_layouts < 1:
            raise ValueError(f"max_layouts must be >= 1, got {max_layouts}")
        self.limits = limits
        self._max_layouts = max_layouts
        self._max_kept_chars = max_kept_chars
        self._layouts: dict[tuple[tuple[str, ...], bytes, bytes], PackLayout] = {}

    def __len__(self) -> int:
        return len(self._layouts)

    def read(self, pack: leaf_pb2.TensorPack, data_size: int | None = None) -> PackTable:
        """The validated table of an untrusted pack; ``CodecError`` as ``read_pack`` raises it."""
        if data_size is None:
            data_size = len(pack.data)
        table = pack.table
        count = len(pack.names)
        if count > self.limits.max_tensors or len(table) != count * RECORD_BYTES or not count:
            return self._checked(pack, data_size)
        names = tuple(pack.names)
        records = np.frombuffer(table, dtype=RECORD)
        dims = pack.dims
        # dtype and rank of every record (the header's part); encodings are checked per pack.
        static = records["dtype"].tobytes() + records["rank"].tobytes()
        layout = self._layouts.get((names, dims, static))
        if layout is None:
            keep = sum(map(len, names)) <= self._max_kept_chars
            return self._checked(pack, data_size, (names, dims, static) if keep else None)
        offsets = records["offset"].astype(np.int64)
        lengths = records["length"].astype(np.int64)
        encodings = records["encoding"]
        sizes = layout.size_array
        ends = offsets + lengths
        raw = encodings == _RAW
        ok = (raw & (lengths == sizes)) | ((encodings == _LZ4) & (lengths * 255 + 16 >= sizes))
        ok &= (offsets % ALIGN == 0) & (ends <= data_size)
        ok[1:] &= offsets[1:] >= ends[:-1]
        if not ok.all():
            return self._checked(pack, data_size)
        return PackTable(layout, offsets.tolist(), lengths.tolist(), encodings.tolist())

    def _checked(
        self, pack: leaf_pb2.TensorPack, data_size: int, key: tuple[tuple[str, ...], bytes, bytes] | None = None
    ) -> PackTable:
        """``read_pack``'s verdict; a valid header is kept under ``key``."""
        entries = read_pack(pack, self.limits, data_size)
        sizes = tuple(e.raw_size for e in entries)
        layout = PackLayout(
            key[0] if key is not None else tuple(e.name for e in entries),  # the key's names: kept once
            tuple(e.dtype for e in entries), tuple(e.shape for e in entries), sizes,
            np.asarray(sizes, dtype=np.int64), key is not None,
        )
        if key is not None:
            if len(self._layouts) >= self._max_layouts:
                self._layouts.clear()
            self._layouts[key] = layout
        return PackTable(
            layout, [e.offset for e in entries], [e.length for e in entries], [e.encoding for e in entries]
        )


def decode_entry(entry: PackEntry, data: bytes | memoryview) -> np.ndarray:
    """A read-only array for ``entry`` of a pack validated by ``read_pack``: a view of
    ``data`` for RAW, the decompressed block for LZ4."""
    storage = _STORAGE[entry.dtype]
    if entry.encoding == _RAW:
        return np.ndarray(entry.shape, storage, data, entry.offset)
    if entry.raw_size == 0:
        return np.empty(entry.shape, storage)
    block = memoryview(data)[entry.offset:entry.offset + entry.length]
    try:
        raw = lz4.block.decompress(block, uncompressed_size=entry.raw_size)
    except lz4.block.LZ4BlockError as exc:
        raise CodecError(entry.name, f"corrupt LZ4 data: {exc}") from None
    if len(raw) != entry.raw_size:
        raise CodecError(entry.name, f"LZ4 data decoded to {len(raw)} bytes, expected {entry.raw_size}")
    return np.ndarray(entry.shape, storage, raw)
