"""Signature-driven feature converter: request tensors -> the model's input dict.

Decodes exactly the signature's ``input_names`` (in order); other features in the request
are never decoded. Request-level tensors (leading dim 1) are broadcast to ``N`` rows with
``expand`` (a view, no copy). RAW payloads become torch tensors without copying
(``numpy.frombuffer`` -> ``torch.from_numpy``); bfloat16 arrives as 16-bit words and is
reinterpreted with ``Tensor.view``. Runs on the event loop; a converter is immutable.

Inputs are read-only views of the request's bytes: models must not modify them in place.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

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

    def convert(self, features: Iterable[Tensor], num_candidates: int) -> ConvertedInputs:
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
        out: dict[str, torch.Tensor] = {}
        total = 0
        max_total = limits.max_total_raw_bytes
        for name, expected in self._checks:
            found = chosen.get(name)
            if found is None:
                raise InvalidRequest(f"feature {name!r}: missing (required by the model)")
            dtype = found.dtype
            if expected is not None and dtype != expected:
                raise InvalidRequest(
                    f"feature {name!r}: dtype {_dtype_name(dtype)}, "
                    f"model expects {DType.Name(expected)}"
                )
            array = _decode(found, limits)
            total += array.nbytes
            if total > max_total:
                raise InvalidRequest(f"feature {name!r}: total size exceeds {max_total} bytes")
            if array.ndim == 0:
                raise InvalidRequest(f"feature {name!r}: rank 0, expected a leading dim of 1 or {n}")
            lead = array.shape[0]
            if lead != n and lead != 1:
                raise InvalidRequest(
                    f"feature {name!r}: leading dim {lead} is neither 1 nor num_candidates {n}"
                )
            value = torch.from_numpy(array)
            if dtype == _BFLOAT16:
                value = value.view(torch.bfloat16)
            if lead != n:
                value = value.expand(n, *array.shape[1:])
            out[name] = value
        return ConvertedInputs(out, n, total)


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
