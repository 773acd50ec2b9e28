"""Client library for the root: ``RootClient`` (blocking) and ``AsyncRootClient`` (asyncio).

``score`` returns one ``ModelScores`` per requested model, keyed by model name; a model
whose partition failed carries its ``error_code`` while the others carry scores. A failure
of the whole call (bad request, unknown model, root unreachable) raises ``grpc.RpcError``.
A client owns one channel (TLS when ``tls`` is given: ``ca_file`` verifies the root,
``cert_file``/``key_file`` present a client certificate); close it (or use it as a context
manager).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import grpc
import numpy as np

from wire.codec import decode, encode
from protos.rootleaf.v1 import root_pb2, root_pb2_grpc
from transport.tls import PLAINTEXT, TlsConfig, aio_channel, sync_channel
from transport.server import GRPC_OPTIONS

ModelSpec = str | tuple[str, str | None]
_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class ModelScores:
    """One model's result."""

    model: str
    version: str
    """The version that served the request (empty on error)."""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    """Output name -> values ``[N]``, in candidate order."""
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""

    @property
    def ok(self) -> bool:
        return self.error_code is grpc.StatusCode.OK


def build_request(
    user_id: int,
    candidate_ids: Sequence[int] | np.ndarray,
    models: Sequence[ModelSpec],
    *,
    request_id: str | None = None,
    request_features: Mapping[str, np.ndarray] | None = None,
) -> root_pb2.ScoreRequest:
    """The ``ScoreRequest`` for these arguments (request features as ``[1, ...]`` arrays)."""
    request = root_pb2.ScoreRequest(request_id=request_id or "", user_id=int(user_id))
    request.candidate_ids.extend(np.asarray(candidate_ids, dtype=np.uint64).tolist())
    for spec in models:
        name, version = (spec, None) if isinstance(spec, str) else spec
        ref = request.models.add(name=name)
        if version is not None:
            ref.version = version
    for name, array in (request_features or {}).items():
        request.request_features.append(encode(name, np.asarray(array), "lz4"))
    return request


def parse_response(response: root_pb2.ScoreResponse) -> dict[str, ModelScores]:
    """Model name -> ``ModelScores``."""
    out: dict[str, ModelScores] = {}
    for result in response.results:
        outputs = {t.name: decode(t) for t in result.outputs}
        out[result.model] = ModelScores(
            model=result.model,
            version=result.version,
            outputs=outputs,
            error_code=_CODES.get(result.error_code, grpc.StatusCode.UNKNOWN),
            error_message=result.error_message,
        )
    return out


class RootClient:
    """Blocking client of one root."""

    def __init__(
        self, target: str, *, options: Sequence[tuple[str, Any]] = (), tls: TlsConfig = PLAINTEXT
    ) -> None:
        self.target = target
        self._channel = sync_channel(target, tls, [*GRPC_OPTIONS, *options])
        self._stub = root_pb2_grpc.RootStub(self._channel)

    def score(
        self,
        user_id: int,
        candidate_ids: Sequence[int] | np.ndarray,
        models: Sequence[ModelSpec],
        *,
        request_id: str | None = None,
        request_features: Mapping[str, np.ndarray] | None = None,
        timeout_s: float = 5.0,
        wait_for_ready: bool = False,
    ) -> dict[str, ModelScores]:
        request = build_request(
            user_id, candidate_ids, models, request_id=request_id, request_features=request_features
        )
        response = self._stub.Score(request, timeout=timeout_s, wait_for_ready=wait_for_ready)
        return parse_response(response)

    def status(self, timeout_s: float = 5.0) -> root_pb2.RootStatusResponse:
        response: root_pb2.RootStatusResponse = self._stub.Status(root_pb2.RootStatusRequest(), timeout=timeout_s)
        return response

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RootClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRootClient:
    """asyncio client of one root (create and use it on one event loop)."""

    def __init__(
        self, target: str, *, options: Sequence[tuple[str, Any]] = (), tls: TlsConfig = PLAINTEXT
    ) -> None:
        self.target = target
        self._channel = aio_channel(target, tls, [*GRPC_OPTIONS, *options])
        self._stub = root_pb2_grpc.RootStub(self._channel)

    async def score(
        self,
        user_id: int,
        candidate_ids: Sequence[int] | np.ndarray,
        models: Sequence[ModelSpec],
        *,
        request_id: str | None = None,
        request_features: Mapping[str, np.ndarray] | None = None,
        timeout_s: float = 5.0,
        wait_for_ready: bool = False,
    ) -> dict[str, ModelScores]:
        request = build_request(
            user_id, candidate_ids, models, request_id=request_id, request_features=request_features
        )
        response = await self._stub.Score(request, timeout=timeout_s, wait_for_ready=wait_for_ready)
        return parse_response(response)

    async def status(self, timeout_s: float = 5.0) -> root_pb2.RootStatusResponse:
        response: root_pb2.RootStatusResponse = await self._stub.Status(
            root_pb2.RootStatusRequest(), timeout=timeout_s
        )
        return response

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncRootClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
