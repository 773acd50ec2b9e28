"""The dtype table: every element type a feature or model input may have, by name.

The name is what files say (catalogs, workloads, signatures); the numpy dtype is how its
values are stored (always little-endian). bfloat16 has no numpy type: it travels as 16-bit
words and a leaf reinterprets them with ``torch.Tensor.view``. The wire enum of each name is
``rootleaf.v1.DType`` with the name upper-cased (``wire.codec`` maps it).
"""

from __future__ import annotations

from typing import Final, Mapping

import numpy as np

__all__ = ["DTYPES", "NUMPY_DTYPES", "storage_dtype"]

DTYPES: Final[Mapping[str, np.dtype]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}
"""Every dtype name -> its little-endian storage dtype."""

NUMPY_DTYPES: Final[tuple[str, ...]] = tuple(name for name in DTYPES if name != "bfloat16")
"""The names numpy represents natively (what feature stores and catalogs hold)."""


def storage_dtype(name: str) -> np.dtype:
    """The storage dtype of ``name``; ``ValueError`` naming the known ones when unknown."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}") from None
