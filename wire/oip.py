"""Open Inference Protocol tensors <-> rootleaf tensors, for both tiers' OIP servicers.

A ``ModelInferRequest`` is untrusted. ``read_headers`` checks every input on what it declares
(datatype, shape, name) against ``DecodeLimits`` and the size of what it carries, and turns
it into a rootleaf ``Tensor`` header (RAW, ``raw_size`` set, no data): nothing is allocated
for it. ``payloads`` then yields each input's bytes: the raw content as received (no copy
beyond protobuf's), or typed contents packed little-endian (one allocation, the size the
header already declared). ``write_outputs`` answers float32 ``[N]`` columns the way the
request came: raw contents for raw inputs, typed contents otherwise. Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence, cast

import numpy as np

from contract.dtypes import DTYPES
from contract.oip import CONTENTS_FIELD, DTYPE_OF_DATATYPE
from protos.inference import grpc_predict_v2_pb2 as oip_pb2
from wire import codec
from wire.codec import DecodeLimits, DType, Encoding, Tensor

__all__ = [
    "Header", "OipError", "OipHeaders", "datatype_of_wire", "payloads", "read_headers", "requested_outputs", "write_outputs",
]

_RAW = int(codec.Encoding.RAW)
_WIRE_OF_DATATYPE = {datatype: codec.DTYPE_BY_NAME[name] for datatype, name in DTYPE_OF_DATATYPE.items()}
_DATATYPE_OF_WIRE = {wire: datatype for datatype, wire in _WIRE_OF_DATATYPE.items()}
_ITEMSIZE = {datatype: DTYPES[name].itemsize for datatype, name in DTYPE_OF_DATATYPE.items()}
_SUPPORTED = ", ".join(DTYPE_OF_DATATYPE)


class OipError(ValueError):
    """A request the protocol or the limits refuse (each tier answers INVALID_ARGUMENT)."""


class Header(NamedTuple):
    """One input's header with the fields of a rootleaf ``Tensor`` that admission and
    decoding read. Built per input on the hot path: a protobuf message costs ~5x more to
    build and a frozen dataclass ~4x more than this immutable tuple."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    raw_size: int
    encoding: int = _RAW
    data: bytes = b""

    def tensor(self, data: bytes) -> Tensor:
        """The rootleaf ``Tensor`` of this input carrying ``data``."""
        return Tensor(
            name=self.name, dtype=cast(DType, self.dtype), shape=self.shape,
            encoding=cast(Encoding, self.encoding), raw_size=self.raw_size, data=data,
        )


@dataclass(frozen=True, slots=True)
class OipHeaders:
    """A request's inputs as rootleaf tensor headers (no data), in request order."""

    tensors: tuple[Header, ...]
    raw: bool
    """The inputs came as ``raw_input_contents`` (the answer then uses raw outputs)."""


def read_headers(request: oip_pb2.ModelInferRequest, limits: DecodeLimits) -> OipHeaders:
    """Check each input's declared datatype, shape and content size against ``limits``; no
    payload is read or allocated."""
    inputs = request.inputs
    if len(inputs) > limits.max_tensors:
        raise OipError(f"{len(inputs)} inputs exceed the limit of {limits.max_tensors}")
    raw_contents = request.raw_input_contents
    raw = len(raw_contents) > 0
    if raw and len(raw_contents) != len(inputs):
        raise OipError(f"{len(raw_contents)} raw_input_contents for {len(inputs)} inputs (one per input)")
    headers: list[Header] = []
    seen: set[str] = set()
    for position, spec in enumerate(inputs):
        name = spec.name
        if not name or len(name) > limits.max_name_length:
            raise OipError(f"input {position}: name must have 1 to {limits.max_name_length} characters")
        if name in seen:
            raise OipError(f"input {name!r}: sent more than once")
        seen.add(name)
        datatype = spec.datatype
        itemsize = _ITEMSIZE.get(datatype)
        if itemsize is None:
            raise OipError(f"input {name!r}: datatype {datatype[:32]!r} is not supported (supported: {_SUPPORTED})")
        if not 0 < len(spec.shape) <= limits.max_rank:  # counted before a dim is read
            raise OipError(f"input {name!r}: rank {len(spec.shape)}, expected 1 to {limits.max_rank}")
        shape = tuple(spec.shape)
        count = 1
        for dim in shape:
            if dim < 0:
                raise OipError(f"input {name!r}: negative dimension in shape {list(shape)}")
            count *= dim
            if count * itemsize > limits.max_raw_bytes:
                raise OipError(f"input {name!r}: shape {list(shape)} exceeds the {limits.max_raw_bytes}-byte limit")
        size = count * itemsize
        if raw:
            if spec.HasField("contents"):
                raise OipError(f"input {name!r}: typed contents and raw_input_contents in one request")
            if len(raw_contents[position]) != size:
                raise OipError(
                    f"input {name!r}: raw content of {len(raw_contents[position])} bytes, "
                    f"{datatype}{list(shape)} takes {size}"
                )
        else:
            field = CONTENTS_FIELD.get(datatype)
            if field is None:
                raise OipError(f"input {name!r}: {datatype} travels only as raw_input_contents")
            given = len(getattr(spec.contents, field))
            if given != count:
                raise OipError(f"input {name!r}: {given} values in {field}, shape {list(shape)} holds {count}")
        headers.append(Header(name, _WIRE_OF_DATATYPE[datatype], shape, size))
    return OipHeaders(tuple(headers), raw)


def payloads(request: oip_pb2.ModelInferRequest, headers: OipHeaders) -> dict[int, bytes]:
    """Each input's bytes by position (call after admission: typed contents are packed here)."""
    if headers.raw:
        raw_contents = request.raw_input_contents
        return {position: raw_contents[position] for position in range(len(headers.tensors))}
    out: dict[int, bytes] = {}
    for position, (spec, header) in enumerate(zip(request.inputs, headers.tensors)):
        storage = codec.numpy_dtype(header.dtype)
        values = np.asarray(getattr(spec.contents, CONTENTS_FIELD[spec.datatype]))
        packed = values.astype(storage)
        if packed.dtype.kind in "iu" and not np.array_equal(packed, values):
            raise OipError(f"input {spec.name!r}: values out of range for {spec.datatype}")
        out[position] = packed.tobytes()
    return out


def requested_outputs(request: oip_pb2.ModelInferRequest, output_names: Sequence[str]) -> tuple[str, ...]:
    """The outputs to answer: those the request names (each must exist), else every one."""
    if not request.outputs:
        return tuple(output_names)
    if len(request.outputs) > len(output_names):  # counted before a name is read
        raise OipError(f"{len(request.outputs)} outputs requested, the model has {len(output_names)}")
    known = frozenset(output_names)
    names = tuple(o.name for o in request.outputs)
    for name in names:
        if name not in known:
            raise OipError(f"output {name[:64]!r} is not an output of the model (outputs: {list(output_names)})")
    return names


def write_outputs(
    response: oip_pb2.ModelInferResponse, outputs: Mapping[str, np.ndarray], names: Sequence[str], *, raw: bool
) -> None:
    """Append ``names`` of ``outputs`` to ``response``: raw little-endian bytes, or typed contents."""
    for name in names:
        column = np.asarray(outputs[name])
        wire = codec.wire_dtype(column.dtype)
        datatype = _DATATYPE_OF_WIRE[wire]
        out = response.outputs.add(name=name, datatype=datatype, shape=column.shape)
        if raw:
            response.raw_output_contents.append(column.astype(codec.numpy_dtype(wire), copy=False).tobytes())
        else:
            getattr(out.contents, CONTENTS_FIELD[datatype]).extend(column.ravel().tolist())


def datatype_of_wire(dtype: int) -> str:
    """The OIP datatype of a wire ``DType`` value (for metadata)."""
    return _DATATYPE_OF_WIRE[dtype]
