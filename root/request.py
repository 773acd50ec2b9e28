"""The domain types of one Score call inside the root: what was asked, and each model's
outcome. Built by the servicer from protobuf, consumed by the engine; immutable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import grpc
import numpy as np

from protos.rootleaf.v1 import tensor_pb2
from root.config import RootConfig
from root.errors import InvalidRequest

__all__ = ["ModelOutcome", "ModelRef", "ScoreInput", "check_counts"]


def check_counts(config: RootConfig, *, models: int, candidates: int, request_features: int) -> None:
    """Every count limit of a request, on the counts alone (O(1)): the servicer calls it on
    the received message before it builds anything per element, the engine again on what it
    is given. Raises ``InvalidRequest`` naming the limit."""
    if not models:
        raise InvalidRequest("models must not be empty")
    if models > config.max_models:
        raise InvalidRequest(f"{models} models exceed max_models={config.max_models}")
    if not candidates:
        raise InvalidRequest("candidate_ids must not be empty")
    if candidates > config.max_candidates:
        raise InvalidRequest(f"{candidates} candidates exceed max_candidates={config.max_candidates}")
    if request_features > config.max_request_features:
        raise InvalidRequest(
            f"request_features: {request_features} tensors exceed max_request_features={config.max_request_features}"
        )


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
