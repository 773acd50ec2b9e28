"""The domain types of one Score call inside the root: what was asked, and each model's
outcome. Built by the servicer from protobuf, consumed by the engine; immutable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import grpc
import numpy as np

from protos.rootleaf.v1 import tensor_pb2

__all__ = ["ModelOutcome", "ModelRef", "ScoreInput"]


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A requested model; ``version`` None = latest."""

    name: str
    version: str | None = None


@dataclass(frozen=True, slots=True)
class ScoreInput:
    """One client request, decoded."""

    request_id: str
    user_id: int
    candidate_ids: np.ndarray
    """uint64 [N]."""
    models: tuple[ModelRef, ...]
    request_features: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Client-supplied request features, each ``[1, ...]``; override or add to the store's."""
    request_tensors: Sequence[tensor_pb2.Tensor] = ()
    """More client-supplied request features as received (untrusted): decoded by the engine
    after admission and validation, under the request's budget (``root.client_features``)."""


@dataclass(frozen=True, slots=True)
class ModelOutcome:
    """One model's result: the leaf's outputs, or the error of its partition's call."""

    model: str
    version: str
    outputs: tuple[tensor_pb2.Tensor, ...]
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""
