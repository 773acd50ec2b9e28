"""The leaf's side of tensor packs: validate an untrusted pack's table, decode each entry once.

Every rule is written once. A pack is checked in three parts, in this order per entry:
its frame (``_records``: tensor count, table and dims sizes), its header (``_read_header``:
names, dtypes, ranks, dims and declared sizes against ``DecodeLimits``, in one plain-Python
pass; what the names, dtypes, ranks and dims determine, a ``PackLayout``) and its payload
placement (``_place``: encoding against length, the LZ4 bound, alignment, order and bounds
within ``data``, vectorised). Nothing is decompressed or allocated before all three pass.
``PackReader`` keeps the header's verdict per distinct header (the only check it skips on a
repeat); ``read_pack`` checks everything every time. Errors are ``CodecError`` naming the
first entry at fault, with the entry's header checks before its placement.
A ``PackReader`` belongs to one thread (the leaf's event loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import lz4.block
import numpy as np

from contract.cache import BoundedCache
from protos.rootleaf.v1 import leaf_pb2
from wire.codec import CodecError, DecodeLimits, empty_shape_problem, lz4_can_decode
from wire.pack_format import ALIGN, DIM, ITEMSIZE, LZ4, RAW, RECORD, RECORD_BYTES, STORAGE


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
    """Kept by a ``PackReader``'s cache (``contract.cache``): what derives from it may be
    kept too."""


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


def _records(pack: leaf_pb2.TensorPack, limits: DecodeLimits) -> np.ndarray:
    """The frame's checks: tensor count, a table of whole records, dims of whole uint32."""
    count = len(pack.names)
    if count > limits.max_tensors:
        raise CodecError("*", f"{count} tensors exceed the limit of {limits.max_tensors}")
    table = pack.table
    if len(table) != count * RECORD_BYTES:
        raise CodecError("*", f"table of {len(table)} bytes does not hold {count} records of {RECORD_BYTES}")
    dims_bytes = pack.dims
    if len(dims_bytes) % DIM.itemsize:
        raise CodecError("*", f"dims of {len(dims_bytes)} bytes is not a whole number of uint32")
    return np.frombuffer(table, dtype=RECORD)


def _read_header(
    names: tuple[str, ...], records: np.ndarray, dims_bytes: bytes, limits: DecodeLimits, kept: bool
) -> tuple[PackLayout, CodecError | None]:
    """The header's checks, entry by entry: the layout of the entries that pass, and the
    error of the first that does not (None when all pass).

    One pass in plain Python over the table's tuples: for the ~100-1000 entries of a request
    it is cheaper than numpy's per-call overhead on a dozen vectorised checks.
    """
    # The dims' count against the ranks before any dim becomes a Python int.
    ranks = int(records["rank"].sum(dtype=np.int64))
    if len(dims_bytes) // DIM.itemsize != ranks:
        raise CodecError("*", f"dims hold {len(dims_bytes) // DIM.itemsize} values, the ranks need {ranks}")
    dims = np.frombuffer(dims_bytes, dtype=DIM).tolist()
    dtypes: list[int] = []
    shapes: list[tuple[int, ...]] = []
    sizes: list[int] = []
    seen: set[str] = set()
    position = total = 0
    max_name, max_rank, max_raw = limits.max_name_length, limits.max_rank, limits.max_raw_bytes
    max_total = limits.max_total_raw_bytes
    fault: CodecError | None = None
    for name, dtype, rank in zip(names, records["dtype"].tolist(), records["rank"].tolist()):
        if not 0 < len(name) <= max_name:
            shown = name[:64] + "..." if name else name
            fault = CodecError(shown, "empty name" if not name else f"name longer than {max_name} characters")
            break
        if name in seen:
            fault = CodecError(name, "duplicate tensor name")
            break
        seen.add(name)
        itemsize = ITEMSIZE.get(dtype)
        if itemsize is None:
            fault = CodecError(name, f"unknown dtype enum value {dtype}")
            break
        if rank > max_rank:
            fault = CodecError(name, f"rank {rank} exceeds {max_rank}")
            break
        following = position + rank  # within dims: their count equals the ranks' sum
        shape = tuple(dims[position:following])
        position = following
        size = math.prod(shape) * itemsize
        if size > max_raw:
            fault = CodecError(name, f"shape {list(shape)} exceeds the {max_raw}-byte limit")
            break
        problem = empty_shape_problem(shape, itemsize, max_raw) if not size and rank else ""
        if problem:
            fault = CodecError(name, problem)
            break
        total += size
        if total > max_total:
            fault = CodecError(name, f"total size exceeds {max_total} bytes")
            break
        dtypes.append(dtype)
        shapes.append(shape)
        sizes.append(size)
    passed = names if fault is None else names[:len(sizes)]
    layout = PackLayout(
        passed, tuple(dtypes), tuple(shapes), tuple(sizes), np.asarray(sizes, dtype=np.int64), kept and fault is None
    )
    return layout, fault


def _place(layout: PackLayout, records: np.ndarray, data_size: int) -> PackTable:
    """The payload checks of every entry of ``layout`` (the first ``len(layout.sizes)``
    records), vectorised: a RAW payload is exactly its decoded size, an LZ4 one can decode
    to it, no other encoding, and each payload starts aligned, after the one before, and
    ends within the ``data_size``-byte data."""
    count = len(layout.sizes)
    records = records[:count]
    offsets = records["offset"].astype(np.int64)
    lengths = records["length"].astype(np.int64)
    encodings = records["encoding"]
    sizes = layout.size_array
    ends = offsets + lengths
    raw = encodings == RAW
    lz4 = encodings == LZ4
    wrong_length = raw & (lengths != sizes)
    bomb = lz4 & ~lz4_can_decode(lengths, sizes)
    unknown = ~(raw | lz4)
    misplaced = (offsets % ALIGN != 0) | (ends > data_size)
    misplaced[1:] |= offsets[1:] < ends[:-1]
    bad = wrong_length | bomb | unknown | misplaced
    if bad.any():
        i = int(np.argmax(bad))
        name, offset, length, size = layout.names[i], int(offsets[i]), int(lengths[i]), layout.sizes[i]
        if wrong_length[i]:
            raise CodecError(name, f"data length {length} != raw_size {size}")
        if bomb[i]:
            raise CodecError(name, f"{length} LZ4 bytes cannot decode to {size} bytes")
        if unknown[i]:
            raise CodecError(name, f"unknown encoding enum value {int(encodings[i])}")
        raise CodecError(name, f"payload [{offset}, {offset + length}) is misaligned, overlaps or "
                               f"lies outside the {data_size}-byte data")
    return PackTable(layout, offsets.tolist(), lengths.tolist(), encodings.tolist())


def _checked(
    names: tuple[str, ...], records: np.ndarray, dims: bytes, limits: DecodeLimits, data_size: int, kept: bool
) -> PackTable:
    """Header then placement; an entry's placement fault comes before a later entry's header
    fault (each entry is judged in table order)."""
    layout, fault = _read_header(names, records, dims, limits, kept)
    table = _place(layout, records, data_size)
    if fault is not None:
        raise fault
    return table


def read_pack(pack: leaf_pb2.TensorPack, limits: DecodeLimits, data_size: int | None = None) -> list[PackEntry]:
    """Validate an untrusted pack's table against ``limits`` (sizes, ranks, dtypes, payload
    bounds and alignment, unique names, total decoded size) without decoding any payload.
    Raises ``CodecError`` naming the entry at fault. ``data_size`` is ``len(pack.data)``
    when the caller already holds the data (reading the field copies it)."""
    records = _records(pack, limits)
    if data_size is None:
        data_size = len(pack.data)
    return _checked(tuple(pack.names), records, pack.dims, limits, data_size, False).entries()


class PackReader:
    """``read_pack`` with the header's verdict kept per distinct header.

    Requests for the same models carry the same names, dtypes and dims; what those determine
    (every name, dtype, rank and size check) is judged the first time and kept under the
    exact header (``contract.cache``: at most ``max_layouts`` headers holding at most
    ``max_kept_chars`` name characters in all; a header whose names alone exceed that is
    never kept, so what a client can make the leaf hold is bounded). A repeat header then
    costs a dict lookup and the vectorised placement checks. Owned by one thread (the leaf's
    event loop).
    """

    def __init__(self, limits: DecodeLimits, *, max_layouts: int = 64, max_kept_chars: int = 1 << 22) -> None:
        if max_layouts < 1:
            raise ValueError(f"max_layouts must be >= 1, got {max_layouts}")
        self.limits = limits
        self._layouts: BoundedCache[tuple[tuple[str, ...], bytes, bytes], PackLayout] = BoundedCache(
            max_layouts, max_bytes=max_kept_chars
        )

    def __len__(self) -> int:
        return len(self._layouts)

    def read(self, pack: leaf_pb2.TensorPack, data_size: int | None = None) -> PackTable:
        """The validated table of an untrusted pack; ``CodecError`` as ``read_pack`` raises it."""
        records = _records(pack, self.limits)
        if data_size is None:
            data_size = len(pack.data)
        names = tuple(pack.names)
        dims = pack.dims
        # dtype and rank of every record (the header's part); the rest is checked per pack.
        key = (names, dims, records["dtype"].tobytes() + records["rank"].tobytes())
        layout = self._layouts.get(key)
        if layout is not None:
            return _place(layout, records, data_size)
        chars = sum(map(len, names))
        table = _checked(names, records, dims, self.limits, data_size, bool(names) and self._layouts.keeps(chars))
        self._layouts.put(key, table.layout, size=chars, keep=table.layout.kept)
        return table


def decode_entry(entry: PackEntry, data: bytes | memoryview) -> np.ndarray:
    """A read-only array for ``entry`` of a pack validated by ``read_pack``: a view of
    ``data`` for RAW, the decompressed block for LZ4."""
    storage = STORAGE[entry.dtype]
    if entry.encoding == RAW:
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
