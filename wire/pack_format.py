"""The tensor pack's layout, shared by the root's writer (``wire.pack_writer``) and the leaf's
reader (``wire.pack_reader``).

A pack is the tensors' names, a fixed-width table of ``RECORD`` (offset, length, dtype,
encoding, rank), their dims (uint32 each, ranks' sum of them) and one ``data`` field with every
payload back to back, each at a multiple of ``ALIGN`` bytes so a RAW payload is an aligned
zero-copy view. What the record's field widths allow is stated here (``MAX_PACK_RANK``,
``MAX_PACK_U32``); what a leaf accepts is ``wire.codec.DecodeLimits``, the one table of decode
limits.
"""

from __future__ import annotations

import numpy as np

from wire.codec import DType, Encoding, numpy_dtype

RECORD = np.dtype(
    [("offset", "<u4"), ("length", "<u4"), ("dtype", "u1"), ("encoding", "u1"), ("rank", "u1"), ("reserved", "u1")]
)
"""One table record (little-endian, no padding)."""
RECORD_BYTES = RECORD.itemsize
DIM = np.dtype("<u4")
"""One dim in ``dims``."""
ALIGN = 8
"""Every payload starts at a multiple of this many bytes of ``data``."""
MAX_PACK_RANK = int(np.iinfo(RECORD["rank"]).max)
"""The most dims a record can declare."""
MAX_PACK_U32 = int(np.iinfo(RECORD["length"]).max)
"""The largest dim, payload length or offset a pack can carry."""
RAW = int(Encoding.RAW)
LZ4 = int(Encoding.LZ4)
ITEMSIZE: dict[int, int] = {
    int(d): np.dtype(numpy_dtype(int(d))).itemsize for d in DType.values() if d != DType.DTYPE_UNSPECIFIED
}
"""Bytes per element of every wire dtype."""
STORAGE: dict[int, np.dtype] = {d: numpy_dtype(d) for d in ITEMSIZE}
"""The numpy storage dtype of every wire dtype."""
