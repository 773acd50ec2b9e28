"""Model inputs from a validated pack: each used entry as a torch tensor without copying.

A RAW entry becomes a view of the received bytes, an LZ4 entry a view of its decompressed
block, bfloat16 is reinterpreted from its 16-bit words and a request-level ``[1, ...]``
entry is broadcast to N rows (``converter.to_input``). Consecutive entries of one dtype and
shape that lie back to back in the data (the root packs them so) are viewed
as one ``[k, N, ...]`` array and split with one ``unbind``: a few calls instead of three
per feature, for the many small features of a recommendation request; request-level
``[1, ...]`` entries likewise, each then broadcast. Runs follow pack order, not the model's
input order (inputs are returned by entry index): a root packs its features grouped by
dtype and shape, while a model's signature may interleave them. Where they turn out not to
lie back to back (or are compressed) in a given request, each is viewed on its own. The
plan (which entries form such runs) depends only on the pack layout, the entries used and
N, and is kept per (layout, entries, N) of a kept layout (``contract.cache``). Owned by the
leaf's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from contract.cache import BoundedCache
from leaf.converter import silence_readonly_warning, to_input
from wire.codec import CodecError, DType
from wire.pack_format import ALIGN, STORAGE
from wire.pack_reader import PackLayout, PackTable

_BFLOAT16 = int(DType.BFLOAT16)
# Plans kept per builder (for layouts their reader keeps).
MAX_PLANS = 64


@dataclass(frozen=True, slots=True)
class _Run:
    """Entries ``first .. first + len(indexes) - 1`` of one dtype and shape, each ``spacing``
    bytes: one ``[k, *shape]`` array when they lie back to back."""

    indexes: tuple[int, ...]
    first: int
    block_shape: tuple[int, ...]
    storage: np.dtype
    bfloat16: bool
    spacing: int
    broadcast: tuple[int, ...] | None
    """Request-level entries (``[1, ...]``): the ``[N, ...]`` shape each is expanded to."""


_Plan = tuple["int | _Run", ...]


def _plan(layout: PackLayout, used: Sequence[int], num_candidates: int) -> _Plan:
    """``used`` in pack order, consecutive entries that may form runs grouped."""
    shapes, dtypes, sizes = layout.shapes, layout.dtypes, layout.sizes
    steps: list[int | _Run] = []
    group: list[int] = []

    def close() -> None:
        if len(group) > 1:
            first = group[0]
            shape = shapes[first]
            steps.append(_Run(
                tuple(group), first, (len(group), *shape), STORAGE[dtypes[first]],
                dtypes[first] == _BFLOAT16, sizes[first],
                (num_candidates, *shape[1:]) if shape[0] != num_candidates else None,
            ))
        else:
            steps.extend(group)
        group.clear()

    for index in sorted(used):
        shape = shapes[index]
        runnable = (
            bool(shape) and shape[0] in (num_candidates, 1) and bool(sizes[index]) and not sizes[index] % ALIGN
        )
        if group and not (
            runnable and index == group[-1] + 1 and shape == shapes[group[-1]] and dtypes[index] == dtypes[group[-1]]
        ):
            close()
        if runnable:
            group.append(index)
        else:
            steps.append(index)
    close()
    return tuple(steps)


class InputBuilder:
    """Builds each used entry of a pack as a model input; keeps plans per layout."""

    def __init__(self, max_plans: int = MAX_PLANS) -> None:
        silence_readonly_warning()
        self._plans: BoundedCache[tuple[PackLayout, tuple[int, ...], int], _Plan] = BoundedCache(max_plans)

    def build(
        self,
        table: PackTable,
        data: bytes | memoryview,
        used: Sequence[int],
        decompressed: dict[int, np.ndarray | CodecError],
        num_candidates: int,
    ) -> dict[int, torch.Tensor | CodecError]:
        """Each entry of ``used`` as a model input keyed by its index; an LZ4 entry is taken
        from ``decompressed`` (its array, or its error)."""
        layout = table.layout
        key = (layout, tuple(used), num_candidates)
        plan = self._plans.get(key)
        if plan is None:
            plan = _plan(layout, used, num_candidates)
            self._plans.put(key, plan, keep=layout.kept)
        shapes, dtypes, offsets, encodings = layout.shapes, layout.dtypes, table.offsets, table.encodings
        storage = STORAGE
        ndarray, from_numpy = np.ndarray, torch.from_numpy
        out: dict[int, torch.Tensor | CodecError] = {}
        for step in plan:
            if type(step) is _Run:
                first = step.first
                end = first + len(step.indexes)
                start = offsets[first]
                if not any(encodings[first:end]) and offsets[first:end] == list(
                    range(start, start + step.spacing * len(step.indexes), step.spacing)
                ):
                    block = from_numpy(ndarray(step.block_shape, step.storage, data, start))
                    if step.bfloat16:
                        block = block.view(torch.bfloat16)
                    if step.broadcast is not None:  # [k, 1, ...] -> [k, N, ...], no copy
                        block = block.expand(len(step.indexes), *step.broadcast)
                    out.update(zip(step.indexes, block.unbind(0)))
                    continue
                singles: Sequence[int] = step.indexes
            else:
                singles = (step,)  # type: ignore[assignment]
            for index in singles:
                if encodings[index]:
                    array = decompressed[index]
                    if isinstance(array, CodecError):
                        out[index] = array
                        continue
                else:
                    array = ndarray(shapes[index], storage[dtypes[index]], data, offsets[index])
                out[index] = to_input(array, dtypes[index], num_candidates)
        return out
