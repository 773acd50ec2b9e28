"""Signature-driven feature converter: request tensors -> the model's input dict.

Decodes exactly the signature's ``input_names`` (in order); other features in the request
are never decoded. Request-level tensors (leading dim 1) are broadcast to ``N`` rows with
``expand`` (a view, no copy). RAW payloads become torch tensors without copying
(``numpy.frombuffer`` -> ``torch.from_numpy``); bfloat16 arrives as 16-bit words and is
reinterpreted with ``Tensor.view``. ``admit`` checks a request on its tensor headers (names,
dtypes, declared sizes) before ``decode`` touches any payload, so a request is refused
before it costs memory. Runs on the event loop; a converter is immutable.

Inputs are read-only views of the request's bytes: models must not modify them in place.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from leaf.admission import Cost, declared_cost
from leaf.errors import InvalidRequest
from leaf.export import Signature
from wire import codec
from wire.codec import CodecError, DecodeLimits, DType, Tensor

_WIRE_DTYPE_BY_NAME = codec.DTYPE_BY_NAME
_BFLOAT16 = int(DType.BFLOAT16)
_silenced = False
_silence_lock = threading.Lock()


def _silence_readonly_warning() -> None:
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


@dataclass(frozen=True, slots=True)
class Admitted:
    """One request's inputs, checked on their headers, not yet decoded."""

    tensors: tuple[Tensor, ...]
    """The signature's inputs, in signature order."""
    num_candidates: int
    cost: Cost


class Converter:
    """Builds a model's input dict from one request's tensors, per its signature."""

    def __init__(self, signature: Signature, limits: DecodeLimits, max_candidates: int) -> None:
        _silence_readonly_warning()
        self.input_names = signature.input_names
        self._wanted = frozenset(signature.input_names)
        self._dtypes: dict[str, int] = {
            name: _WIRE_DTYPE_BY_NAME[dtype] for name, dtype in (signature.input_dtypes or {}).items()
        }
        self._limits = limits
        self._max_candidates = max_candidates
        # (name, declared wire dtype or None) in signature order: one tuple per input read
        # per request instead of a dict lookup.
        self._checks: tuple[tuple[str, int | None], ...] = tuple(
            (name, self._dtypes.get(name)) for name in self.input_names
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
        wanted = self._wanted
        chosen: dict[str, Tensor] = {}
        count = 0
        for tensor in features:
            count += 1
            name = tensor.name
            if name in wanted:
                if name in chosen:
                    raise InvalidRequest(f"feature {name!r}: sent more than once")
                chosen[name] = tensor
        if count > limits.max_tensors:
            raise InvalidRequest(f"{count} tensors exceed the limit of {limits.max_tensors}")
        inputs: list[Tensor] = []
        for name, expected in self._checks:
            found = chosen.get(name)
            if found is None:
                raise InvalidRequest(f"feature {name!r}: missing (required by the model)")
            if expected is not None and found.dtype != expected:
                raise InvalidRequest(
                    f"feature {name!r}: dtype {_dtype_name(found.dtype)}, "
                    f"model expects {DType.Name(expected)}"
                )
            inputs.append(found)
        return Admitted(tuple(inputs), n, declared_cost(inputs, n, limits))

    def convert(self, features: Iterable[Tensor], num_candidates: int) -> ConvertedInputs:
        """``admit`` then ``decode``."""
        return self.decode(self.admit(features, num_candidates))

    def decode(self, admitted: Admitted) -> ConvertedInputs:
        """Decode admitted inputs into the model's input dict."""
        limits = self._limits
        n = admitted.num_candidates
        out: dict[str, torch.Tensor] = {}
        for name, found in zip(self.input_names, admitted.tensors):
            array = _decode(found, limits)
            value = torch.from_numpy(array)
            if found.dtype == _BFLOAT16:
                value = value.view(torch.bfloat16)
            if array.shape[0] != n:
                value = value.expand(n, *array.shape[1:])
            out[name] = value
        return ConvertedInputs(out, n, admitted.cost.raw_bytes)


def _decode(tensor: Tensor, limits: DecodeLimits) -> np.ndarray:
    try:
        return codec.decode(tensor, limits)
    except CodecError as exc:
        raise InvalidRequest(f"feature {str(exc)[len('tensor '):]}") from None


def _dtype_name(value: int) -> str:
    try:
        return DType.Name(value)
    except ValueError:
        return str(value)
