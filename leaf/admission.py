"""Admission of leaf requests on declared sizes, before anything is decompressed or allocated.

A request's cost is what its inputs occupy once every input has ``num_candidates`` rows:
that is what a merged batch materialises at ``torch.cat`` (a ``[1, ...]`` input broadcast to
N rows costs N times its width), and it bounds what decoding allocates. ``declared_cost``
computes it from tensor headers alone; ``InflightBytes`` bounds the sum of the costs of the
requests a leaf holds at once (decoded, queued or running). Any leaf RPC admits its requests
through these two. ``InflightBytes`` is owned by the server's event loop (no lock).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

from leaf import metrics
from leaf.errors import InvalidRequest, Overloaded, invalid_feature
from wire import codec
from wire.codec import CodecError, DecodeLimits, Tensor

_ITEMSIZE: dict[int, int] = {
    codec.DTYPE_BY_NAME[name]: codec.numpy_dtype(codec.DTYPE_BY_NAME[name]).itemsize for name in codec.DTYPE_BY_NAME
}


Layout = tuple[tuple[int, tuple[int, ...]], ...]
"""Per input: (wire dtype, shape of one candidate's value, i.e. the dims after the first)."""


@dataclass(frozen=True, slots=True)
class Cost:
    """Declared sizes and layout of a set of input tensors at ``num_candidates`` rows."""

    raw_bytes: int
    """Decoded bytes (sum of ``raw_size``): what decoding allocates."""
    row_bytes: int
    """Bytes once every input has ``num_candidates`` rows: what a merged batch holds."""
    layout: Layout
    """Each tensor's dtype and per-candidate shape, in the order given."""
    shapes: tuple[tuple[int, ...], ...]
    """Each tensor's validated shape, in the order given."""
    sizes: tuple[int, ...]
    """Each tensor's decoded size in bytes, in the order given."""


def _checked_size(tensor: Tensor, limits: DecodeLimits) -> int:
    try:
        return codec.expected_raw_size(tensor, limits)
    except CodecError as exc:
        raise invalid_feature(exc) from None


def declared_cost(tensors: Iterable[Tensor], num_candidates: int, limits: DecodeLimits) -> Cost:
    """Validate the headers of ``tensors`` (leading dim 1 or ``num_candidates``) and return
    their cost without touching a payload; over ``limits.max_total_raw_bytes`` is
    ``InvalidRequest`` naming the limit."""
    n = num_candidates
    raw = rows = 0
    layout: list[tuple[int, tuple[int, ...]]] = []
    shapes: list[tuple[int, ...]] = []
    sizes: list[int] = []
    max_name, max_rank, max_bytes = limits.max_name_length, limits.max_rank, limits.max_raw_bytes
    for tensor in tensors:
        dtype = tensor.dtype
        dims = tensor.shape
        # The rank first: a shape is copied only when it is within the limit.
        shape = tuple(dims) if len(dims) <= max_rank else ()
        itemsize = _ITEMSIZE.get(dtype)
        # Fast path for well-formed headers with elements; anything else (an empty tensor
        # included) gets the codec's diagnosis.
        size = -1
        if itemsize is not None and 0 < len(tensor.name) <= max_name and shape and min(shape) >= 0:
            size = math.prod(shape) * itemsize
            if not 0 < size <= max_bytes or tensor.raw_size != size:
                size = -1
        if size < 0:
            size = _checked_size(tensor, limits)
        if not shape:
            raise InvalidRequest(f"feature {tensor.name!r}: rank 0, expected a leading dim of 1 or {n}")
        lead = shape[0]
        if lead == n:
            rows += size
        elif lead == 1:
            rows += size * n
        else:
            raise InvalidRequest(
                f"feature {tensor.name!r}: leading dim {lead} is neither 1 nor num_candidates {n}"
            )
        raw += size
        layout.append((dtype, shape[1:]))
        shapes.append(shape)
        sizes.append(size)
    if rows > limits.max_total_raw_bytes:
        raise InvalidRequest(
            f"inputs take {rows} bytes at {n} candidates, over "
            f"decode_limits.max_total_raw_bytes={limits.max_total_raw_bytes}"
        )
    return Cost(raw, rows, tuple(layout), tuple(shapes), tuple(sizes))


class Hold:
    """Bytes of an ``InflightBytes`` held for one request until every holder has let go: the
    call, and each piece of work it handed on (a decode in an executor, a batcher item),
    which can outlive a cancelled call or a passed deadline. Loop-owned, like its owner."""

    __slots__ = ("_owner", "nbytes", "_holders")

    def __init__(self, owner: "InflightBytes", nbytes: int) -> None:
        self._owner = owner
        self.nbytes = nbytes
        self._holders = 1

    def retain(self) -> None:
        """One more holder, which calls ``release`` (on the loop) when its work ends."""
        self._holders += 1

    def release(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            self._owner._give_back(self.nbytes)


class InflightBytes:
    """The server-wide bound on bytes of admitted requests (``LeafConfig.max_inflight_bytes``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        metrics.INFLIGHT_BYTES_LIMIT.set(limit)

    def acquire(self, nbytes: int) -> Hold:
        """Hold ``nbytes`` until the returned hold is released by all its holders;
        ``Overloaded`` (RESOURCE_EXHAUSTED) when they do not fit."""
        if self.held + nbytes > self.limit:
            metrics.ADMISSION_REJECTED.labels("inflight_bytes").inc()
            raise Overloaded(
                f"{self.held} bytes of requests in flight, {nbytes} more would exceed "
                f"max_inflight_bytes={self.limit}"
            )
        self.held += nbytes
        metrics.INFLIGHT_BYTES.inc(nbytes)
        return Hold(self, nbytes)

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[Hold]:
        """``acquire`` for the block: the block's own share is released when it ends."""
        held = self.acquire(nbytes)
        try:
            yield held
        finally:
            held.release()

    def _give_back(self, nbytes: int) -> None:
        self.held -= nbytes
        metrics.INFLIGHT_BYTES.dec(nbytes)
