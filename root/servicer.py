"""``rootleaf.v1.Root`` servicer: translates protobuf <-> domain types, nothing more.

Scoring logic lives in ``root.scoring``; errors are mapped to status codes here, in one
place (``root.errors.status_of``), with internal failures logged with the request id and
answered with a generic message. Runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Callable, Mapping

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from protos.rootleaf.v1 import root_pb2, root_pb2_grpc
from root import metrics
from root.config import RootConfig
from root.partition_health import PartitionHealth
from root.errors import InvalidRequest, status_of
from root.request import ModelRef, ScoreInput, check_counts
from root.scoring import ScoreEngine
from root.shadow import ShadowMirror
from transport.status import abort

log = logging.getLogger(__name__)

SERVICE_NAME = "rootleaf.v1.Root"

BundleStatuses = Callable[[], Mapping[str, object]]
PartitionHealthView = Callable[[], Mapping[str, PartitionHealth]]


def deserialize_score_request(data: bytes) -> root_pb2.ScoreRequest | str:
    """The request, or the reason it does not parse (answered INVALID_ARGUMENT by ``Score``;
    gRPC's own deserialisation failure would reach the client as UNKNOWN)."""
    try:
        return root_pb2.ScoreRequest.FromString(data)
    except DecodeError as exc:
        return f"malformed ScoreRequest: {exc}"


REDACTED_ERROR = "load failed (the root's log has the detail; status_detail = true reports it here)"


def _bundle_status(name: str, status: object, detail: bool) -> root_pb2.BundleStatus:
    """A bundle's status; without ``detail`` no file path or error text (they name files)."""
    error = str(getattr(status, "last_error") or "")
    return root_pb2.BundleStatus(
        name=name,
        path=str(getattr(status, "path")) if detail else "",
        model_count=int(getattr(status, "model_count")),
        version_count=int(getattr(status, "version_count")),
        last_good_load_unix=float(getattr(status, "last_good_load_unix") or 0.0),
        last_error=error if detail or not error else REDACTED_ERROR,
        content_hash=str(getattr(status, "content_hash") or ""),
    )


class RootServicer(root_pb2_grpc.RootServicer):
    """gRPC face of a ``ScoreEngine``."""

    def __init__(
        self,
        engine: ScoreEngine,
        config: RootConfig,
        bundle_statuses: BundleStatuses,
        partition_health: PartitionHealthView = dict,
        shadow: ShadowMirror | None = None,
    ) -> None:
        self._engine = engine
        self._shadow = shadow
        self._config = config
        self._bundle_statuses = bundle_statuses
        self._partition_health = partition_health

    async def Score(  # noqa: N802 (gRPC method name)
        self, request: root_pb2.ScoreRequest | str, context: grpc.aio.ServicerContext
    ) -> root_pb2.ScoreResponse:
        start = time.perf_counter()
        malformed = request if isinstance(request, str) else ""
        if isinstance(request, str):
            request = root_pb2.ScoreRequest()
        request_id = request.request_id or uuid.uuid4().hex
        code = grpc.StatusCode.OK
        try:
            if malformed:
                raise InvalidRequest(malformed)
            # Counts first, on the message as parsed: nothing below runs per element before
            # every count is within its limit.
            check_counts(
                self._config, models=len(request.models), candidates=len(request.candidate_ids),
                request_features=len(request.request_features),
            )
            score_input = ScoreInput(
                request_id=request_id,
                user_id=request.user_id,
                candidate_ids=np.fromiter(request.candidate_ids, dtype=np.uint64, count=len(request.candidate_ids)),
                models=tuple(
                    ModelRef(m.name, m.version if m.HasField("version") else None) for m in request.models
                ),
                request_tensors=tuple(request.request_features),
            )
            outcomes = await self._engine.score(score_input, context.time_remaining())
            response = root_pb2.ScoreResponse(request_id=request_id)
            for outcome in outcomes:
                result = response.results.add(
                    model=outcome.model,
                    version=outcome.version,
                    error_code=outcome.error_code.value[0],
                    error_message=outcome.error_message,
                )
                result.outputs.extend(outcome.outputs)
            if self._shadow is not None:
                self._shadow.offer(request, response)  # O(1), never raises: the answer goes out now
            return response
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # the one boundary where errors become status codes
            code, message = status_of(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("request %s failed", request_id)
            await abort(context, code, message)
        finally:
            metrics.child(metrics.REQUESTS, code.name).inc()
            metrics.REQUEST_SECONDS.observe(time.perf_counter() - start)

    def handler(self) -> grpc.GenericRpcHandler:
        """The ``rootleaf.v1.Root`` handler, with a Score deserialiser that never raises."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Score": grpc.unary_unary_rpc_method_handler(
                    self.Score,
                    request_deserializer=deserialize_score_request,
                    response_serializer=root_pb2.ScoreResponse.SerializeToString,
                ),
                "Status": grpc.unary_unary_rpc_method_handler(
                    self.Status,
                    request_deserializer=root_pb2.RootStatusRequest.FromString,
                    response_serializer=root_pb2.RootStatusResponse.SerializeToString,
                ),
            },
        )

    async def Status(  # noqa: N802 (gRPC method name)
        self, request: root_pb2.RootStatusRequest, context: grpc.aio.ServicerContext
    ) -> root_pb2.RootStatusResponse:
        detail = self._config.status_detail
        # pid: which of a root's worker processes answered (``rootleaf root --workers N``).
        response = root_pb2.RootStatusResponse(settings={**self._config.settings(), "pid": str(os.getpid())})
        for name, status in sorted(self._bundle_statuses().items()):
            response.bundles.append(_bundle_status(name, status, detail))
        health = self._partition_health()
        for part in self._config.partitions.values():
            out = response.partitions.add(name=part.name, models=list(part.models))
            checked = health.get(part.name)
            if checked is not None:
                out.addresses = len(checked.targets)
                out.serving_addresses = checked.serving
            if detail:
                out.targets.extend(part.targets)
                for t in checked.targets if checked is not None else ():
                    out.health.add(target=t.target, address=t.address, serving=t.serving, detail=t.detail)
        return response
