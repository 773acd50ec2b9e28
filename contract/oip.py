"""The Open Inference Protocol's facts both tiers share: datatype names, which typed
contents field carries each, and the tensor names of a root ``ModelInfer`` request.

OIP names element types in upper case (``FP32``); rootleaf's dtype table
(``contract.dtypes``) names them in lower case. Types rootleaf has no dtype for (``UINT16``,
``UINT32``, ``UINT64``, ``INT16``, ``BYTES``) are refused by name. FP16 and BF16 travel only as
raw contents (the protocol has no typed field for them). Pure data; no gRPC.
"""

from __future__ import annotations

from typing import Final, Mapping

__all__ = [
    "CANDIDATE_IDS", "CONTENTS_FIELD", "DTYPE_OF_DATATYPE", "DATATYPE_OF_DTYPE", "OUTPUT_DATATYPE",
    "PLATFORM", "USER_ID",
]

DTYPE_OF_DATATYPE: Final[Mapping[str, str]] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "BF16": "bfloat16",
    "FP32": "float32",
    "FP64": "float64",
}
"""OIP datatype -> ``contract.dtypes`` name."""

DATATYPE_OF_DTYPE: Final[Mapping[str, str]] = {v: k for k, v in DTYPE_OF_DATATYPE.items()}

CONTENTS_FIELD: Final[Mapping[str, str]] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "INT8": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
"""OIP datatype -> the ``InferTensorContents`` field holding it (absent: raw only)."""

OUTPUT_DATATYPE: Final[str] = "FP32"
"""Every model output is float32 ``[N]`` (the leaf's calling convention)."""

PLATFORM: Final[str] = "pytorch_torchscript"
"""What ``ModelMetadata`` reports as the platform (Triton's name for TorchScript models)."""

# A root ModelInfer request: these two tensors, plus any request feature by its feature name
# with shape [1, ...] (overriding or adding to the store's, as in Root/Score).
CANDIDATE_IDS: Final[str] = "candidate_ids"
"""INT64 or UINT64-valued ids of the candidates, shape ``[N]`` (sent as INT64)."""
USER_ID: Final[str] = "user_id"
"""INT64 id of the user, shape ``[1]``."""
