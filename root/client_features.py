"""Client-supplied request features: untrusted tensors decoded under a per-request budget.

A client may send request-level features with its Score call (``request_features``). They
are the only tensors the root decodes from a client, so they are where a small request
could make it allocate (LZ4 expands up to ~255x) or spin. The engine checks them in this
order, after admission and after the cheap request checks:

1. ``declared_bytes``: count, unique names, headers and the sum of the declared decoded
   sizes against the budget (``RootConfig.max_request_features`` and
   ``max_request_feature_bytes``); nothing is decompressed or allocated yet.
2. ``decode``: the tensors themselves, each bounded by the budget; the engine runs it off the
   event loop when the declared total exceeds ``DECODE_ON_LOOP_BYTES``.
3. ``check_passable``: each array is one the root can re-encode for the leaves.

Every violation is an ``InvalidRequest`` (INVALID_ARGUMENT) naming the tensor or the limit.
Pure functions; safe on any thread.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from protos.rootleaf.v1 import tensor_pb2
from root.errors import InvalidRequest, shown
from wire import codec

# Declared decoded bytes up to which client tensors decode on the event loop: at ~2 GB/s
# for LZ4 that is ~30 us, less than handing the work to a thread costs.
DECODE_ON_LOOP_BYTES = 64 * 1024

_BFLOAT16 = int(codec.DType.BFLOAT16)


def declared_bytes(
    tensors: Sequence[tensor_pb2.Tensor], *, max_count: int, max_bytes: int, copies: int = 1
) -> int:
    """Validate the tensors' headers against the budget; their declared decoded bytes.

    ``copies`` is how many times the root materialises each one (``num_candidates`` when
    request features are tiled rather than sent once); the budget covers all copies.
    """
    if len(tensors) > max_count:
        raise InvalidRequest(f"request_features: {len(tensors)} tensors exceed max_request_features={max_count}")
    limits = codec.DecodeLimits(max_raw_bytes=max_bytes, max_total_raw_bytes=max_bytes, max_tensors=max_count)
    seen: set[str] = set()
    total = 0
    for tensor in tensors:
        name = tensor.name
        if name in seen:
            raise InvalidRequest(f"request_features: tensor {shown(name)} given twice")
        seen.add(name)
        if tensor.dtype == _BFLOAT16:
            # The root holds features as numpy arrays, which have no bfloat16.
            raise InvalidRequest(f"request_features: tensor {shown(name)}: bfloat16 cannot be passed on by the root")
        try:
            size = codec.expected_raw_size(tensor, limits)
        except codec.OverLimit:
            raise InvalidRequest(
                f"request_features: tensor {shown(name)} declares more than max_request_feature_bytes={max_bytes}"
            ) from None
        except codec.CodecError as exc:
            raise InvalidRequest(f"request_features: {exc}") from None
        total += size * copies
        if total > max_bytes:
            raise InvalidRequest(
                f"request_features: {total}+ decoded bytes exceed max_request_feature_bytes={max_bytes}"
            )
    return total


def decode(tensors: Sequence[tensor_pb2.Tensor], max_bytes: int) -> dict[str, np.ndarray]:
    """Decode tensors already checked by ``declared_bytes`` (read-only arrays by name)."""
    limits = codec.DecodeLimits(max_raw_bytes=max_bytes, max_total_raw_bytes=max_bytes)
    out: dict[str, np.ndarray] = {}
    for tensor in tensors:
        try:
            out[tensor.name] = codec.decode(tensor, limits)
        except codec.CodecError as exc:
            raise InvalidRequest(f"request_features: {exc}") from None
    return out


def check_passable(features: Mapping[str, np.ndarray]) -> None:
    """Every array has a leading dim of 1 and a dtype the wire carries."""
    for name, array in features.items():
        if array.ndim == 0 or array.shape[0] != 1:
            raise InvalidRequest(f"request feature {shown(name)} must have leading dim 1, got shape {list(array.shape)}")
        try:
            codec.wire_dtype(array.dtype)
        except ValueError as exc:
            raise InvalidRequest(f"request feature {shown(name)}: {exc}") from None
