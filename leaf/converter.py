"""Signature-driven feature converter: request tensors -> the model's input dict.

Decodes exactly the signature's ``input_names`` (in order); other features in the request
are never decoded. Request-level tensors (leading dim 1) are broadcast to ``N`` rows with
``expand`` (a view, no copy). RAW payloads become torch tensors without copying
(``numpy.frombuffer`` -> ``torch.from_numpy``); bfloat16 arrives as 16-bit words and is
reinterpreted with ``Tensor.view``. ``admit`` checks a request on its tensor headers (names,
dtypes, declared sizes) before ``decode`` touches any payload, so a request is refused
before it costs memory, and against each input's dtype and per-candidate shape: declared by
the signature (``input_dtypes``, ``input_shapes``) or, where it is silent, learned from the
version's first successful forward. ``admit_pack`` admits the inputs of a ``TensorPack``
by index and keeps what admission computed per (pack layout, indexes, N), so a repeat
request layout is admitted with a dict lookup. Runs on the event loop (which owns that
cache); a converter is otherwise immutable apart from the write-once learned expectations.

Inputs are read-only views of the request's bytes: models must not modify them in place.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, cast

import numpy as np
import torch

from contract.cache import BoundedCache
from leaf.admission import Cost, Layout, declared_cost
from leaf.errors import InvalidRequest, invalid_feature
from leaf.export import Signature
from wire import codec
from wire.codec import CodecError, DecodeLimits, DType, Tensor
from wire.pack_reader import PackLayout, PackTable

_WIRE_DTYPE_BY_NAME = codec.DTYPE_BY_NAME
_BFLOAT16 = int(DType.BFLOAT16)
_silenced = False
_silence_lock = threading.Lock()


def silence_readonly_warning() -> None:
    """Trigger torch's one-time "array is not writable" warning while it is ignored.

    Torch warns once per process when it wraps a read-only buffer; the leaf does that on
    purpose (zero-copy views of request bytes, never written to), so the warning is noise.
    """
    global _silenced
    with _silence_lock:
        if _silenced:
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            torch.from_numpy(np.frombuffer(b"\0\0\0\0", dtype=np.float32))
        _silenced = True


@dataclass(frozen=True, slots=True)
class ConvertedInputs:
    """One request's model inputs, each with leading dim ``num_candidates``."""

    tensors: dict[str, torch.Tensor]
    num_candidates: int
    decoded_bytes: int
    """Raw bytes of the decoded (used) features."""
    layout: Layout = ()
    """Each input's wire dtype and per-candidate shape, in signature order."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """One request's inputs, checked on their headers, not yet decoded."""

    tensors: tuple[Tensor, ...]
    """The signature's inputs, in signature order."""
    num_candidates: int
    cost: Cost
    positions: tuple[int, ...]
    """Where each input was among the request's features."""


@dataclass(frozen=True, slots=True)
class PackAdmitted:
    """One model's inputs in a pack, checked on their headers: the pack index of each
    signature input, in signature order, and their cost."""

    indexes: tuple[int, ...]
    num_candidates: int
    cost: Cost


_Expected = tuple[tuple[int | None, tuple[int, ...] | None], ...]
# Distinct (pack layout, indexes, N) admissions kept per version (``contract.cache``).
MAX_PACK_ADMISSIONS = 64


class Converter:
    """Builds a model's input dict from one request's tensors, per its signature."""

    def __init__(self, signature: Signature, limits: DecodeLimits, max_candidates: int) -> None:
        silence_readonly_warning()
        self.input_names = signature.input_names
        self._wanted = frozenset(signature.input_names)
        declared_dtypes = signature.input_dtypes or {}
        declared_shapes = signature.input_shapes or {}
        self._limits = limits
        self._max_candidates = max_candidates
        # What each input must look like, in signature order: (wire dtype, per-candidate
        # shape), None where neither the signature declares it nor a forward has shown it.
        # A request whose layout equals this tuple passes with one comparison.
        self._complete = False  # every expectation known: ``learn`` has nothing left to do
        self._admissions: BoundedCache[tuple[PackLayout, tuple[int, ...], int], tuple[PackAdmitted, _Expected]] = (
            BoundedCache(MAX_PACK_ADMISSIONS)
        )
        self._expected: _Expected = tuple(
            (
                _WIRE_DTYPE_BY_NAME[declared_dtypes[name]] if name in declared_dtypes else None,
                declared_shapes.get(name),
            )
            for name in self.input_names
        )

    @property
    def expected(self) -> tuple[tuple[int | None, tuple[int, ...] | None], ...]:
        """Per input, in signature order: (wire dtype, per-candidate shape), None = unknown."""
        return self._expected

    def learn(self, layout: Layout) -> bool:
        """Fill what the signature leaves open from a request the model ran successfully;
        True when that changed the expectations (once per version).

        Called by the inference thread; the one attribute assignment is atomic, so the
        event loop reads either the old or the new expectations.
        """
        expected = self._expected
        if self._complete or len(layout) != len(expected):
            return False
        if all(d is not None and s is not None for d, s in expected):
            self._complete = True
            return False
        self._expected = tuple(
            (d if d is not None else seen_d, s if s is not None else seen_s)
            for (d, s), (seen_d, seen_s) in zip(expected, layout)
        )
        return True

    def describe_expected(self) -> str:
        """The expectations, readable (``name: DTYPE[dims]`` per input) for logs."""
        return ", ".join(
            f"{name}: {'any' if d is None else _dtype_name(d)}{'[...]' if s is None else list(s)}"
            for name, (d, s) in zip(self.input_names, self._expected)
        )

    def admit(self, features: Iterable[Tensor], num_candidates: int) -> Admitted:
        """Pick the signature's inputs and check them on their headers alone: no payload is
        decompressed and nothing is allocated (see ``leaf.admission``)."""
        n = num_candidates
        if not 1 <= n <= self._max_candidates:
            raise InvalidRequest(
                f"num_candidates must be in [1, {self._max_candidates}], got {n}"
            )
        limits = self._limits
        given = features if isinstance(features, Sequence) else list(features)
        # The count first: nothing is done per tensor for a request with too many.
        if len(given) > limits.max_tensors:
            raise InvalidRequest(f"{len(given)} tensors exceed the limit of {limits.max_tensors}")
        wanted = self._wanted
        chosen: dict[str, int] = {}
        for position, tensor in enumerate(given):
            name = tensor.name
            if name in wanted:
                if name in chosen:
                    raise InvalidRequest(f"feature {name!r}: sent more than once")
                chosen[name] = position
        positions: list[int] = []
        for name in self.input_names:
            found = chosen.get(name)
            if found is None:
                raise InvalidRequest(f"feature {name!r}: missing (required by the model)")
            positions.append(found)
        inputs = [given[p] for p in positions]
        cost = declared_cost(inputs, n, limits)
        if cost.layout != self._expected:
            self._check_layout(cost.layout)
        return Admitted(tuple(inputs), n, cost, tuple(positions))

    def admit_pack(self, table: PackTable, indexes: Sequence[int], num_candidates: int) -> PackAdmitted:
        """``admit`` for the pack entries at ``indexes`` (each < ``len(table)``), remembered per
        (layout, indexes, N) of a layout its reader keeps: only a layout seen for the first
        time, or expectations learned since, is checked again. Errors are not remembered (each
        bad request is checked)."""
        # The count first: no entry is built for a model naming more than any pack holds.
        if len(indexes) > self._limits.max_tensors:
            raise InvalidRequest(f"{len(indexes)} tensors exceed the limit of {self._limits.max_tensors}")
        key = (table.layout, tuple(indexes), num_candidates)
        found = self._admissions.get(key)
        expected = self._expected
        if found is not None:
            admitted, checked_against = found
            if checked_against is expected:
                return admitted
            if admitted.cost.layout != expected:
                self._check_layout(admitted.cost.layout)
        else:
            entries = [table.entry(i) for i in key[1]]
            # Pack entries carry the header fields admission reads (name, dtype, shape, raw_size).
            checked = self.admit(cast(list[Tensor], entries), num_candidates)
            position = {entries[slot].name: index for slot, index in enumerate(key[1])}
            admitted = PackAdmitted(
                tuple(position[t.name] for t in checked.tensors), num_candidates, checked.cost
            )
        self._admissions.put(key, (admitted, expected), keep=table.layout.kept)
        return admitted

    def _check_layout(self, layout: Layout) -> None:
        """Raise for the first input whose dtype or shape differs from the expected one."""
        for name, (dtype, shape), (want_dtype, want_shape) in zip(self.input_names, layout, self._expected):
            if want_dtype is not None and dtype != want_dtype:
                raise InvalidRequest(
                    f"feature {name!r}: dtype {_dtype_name(dtype)}, model expects {DType.Name(want_dtype)}"
                )
            if want_shape is not None and shape != want_shape:
                raise InvalidRequest(
                    f"feature {name!r}: shape {list(shape)} per candidate, model expects {list(want_shape)}"
                )

    def convert(self, features: Iterable[Tensor], num_candidates: int) -> ConvertedInputs:
        """``admit`` then ``decode``."""
        return self.decode(self.admit(features, num_candidates))

    def decode(self, admitted: Admitted, payloads: Mapping[int, memoryview] | None = None) -> ConvertedInputs:
        """Decode admitted inputs into the model's input dict (headers are not re-checked).
        ``payloads``: the data of tensors parsed without it, by position among the features."""
        limits = self._limits
        n = admitted.num_candidates
        cost = admitted.cost
        out: dict[str, torch.Tensor] = {}
        for name, found, shape, size, position in zip(
            self.input_names, admitted.tensors, cost.shapes, cost.sizes, admitted.positions
        ):
            try:
                data = payloads.get(position) if payloads else None
                array = codec.decode_payload(found, shape, size, limits, data=data)
            except CodecError as exc:
                raise invalid_feature(exc) from None
            out[name] = to_input(array, found.dtype, n)
        return ConvertedInputs(out, n, cost.raw_bytes, cost.layout)


def to_input(array: np.ndarray, dtype: int, num_candidates: int) -> torch.Tensor:
    """A decoded array as a model input: a torch view (bfloat16 reinterpreted from its
    16-bit words), a request-level ``[1, ...]`` array broadcast to ``num_candidates`` rows."""
    value = torch.from_numpy(array)
    if dtype == _BFLOAT16:
        value = value.view(torch.bfloat16)
    if array.shape[0] != num_candidates:
        value = value.expand(num_candidates, *array.shape[1:])
    return value


def _dtype_name(value: int) -> str:
    try:
        return DType.Name(value)
    except ValueError:
        return str(value)
