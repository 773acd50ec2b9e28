"""The root's Open Inference Protocol face: ``inference.GRPCInferenceService`` beside
``rootleaf.v1.Root`` on the same port, for one model per call.

A ``ModelInfer`` request carries ``candidate_ids`` (INT64 ``[N]``), ``user_id`` (INT64 ``[1]``)
and optionally request features, each named by its feature name, ``[1, ...]`` (as
``Root/Score``'s ``request_features``); names in ``contract.oip``. It runs the same path as
``Root/Score`` (``ScoreEngine.score``: validation, version resolution, fetch, trim, partition
call) and answers the model's outputs the way the inputs came (raw or typed). Metadata and
readiness come from the bundles (versions, output names) and the partitions' health and
loaded versions. Errors map to status codes in one place (``root.errors.status_of``).
Runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Callable, Mapping

import grpc
import numpy as np

from contract.bundle_file import BundleError, ModelVersion, parse_bundle
from contract.oip import CANDIDATE_IDS, OUTPUT_DATATYPE, PLATFORM, USER_ID
from contract.versions import latest_version, version_key
from protos.inference import grpc_predict_v2_pb2 as oip_pb2
from root import metrics
from root.errors import InvalidRequest, ModelNotFound, RootError, shown, status_of
from root.partition_health import PartitionHealth
from root.request import ModelRef, ScoreInput
from root.scoring import ScoreEngine
from wire import codec, oip
from wire.codec import DecodeLimits
from wire.oip_service import WireInfer, package_version
from transport.status import abort

log = logging.getLogger(__name__)

SERVER_NAME = "rootleaf-root"
_ID_DATATYPE = "INT64"


class VersionNotServed(RootError):
    """ModelMetadata for a version no leaf of the model's partition serves."""

    code = grpc.StatusCode.NOT_FOUND


class RootOipServicer:
    """OIP over a ``ScoreEngine``, the bundle files and the partitions' health."""

    def __init__(
        self,
        engine: ScoreEngine,
        bundles: Mapping[str, Path],
        partition_health: Callable[[], Mapping[str, PartitionHealth]],
    ) -> None:
        config = engine.config
        self._engine = engine
        self._bundles = dict(bundles)
        self._partition_health = partition_health
        self._partition_of = {m: p.name for p in config.partitions.values() for m in p.models}
        # The root's own budget: ids and user, plus at most max_request_features features.
        self._limits = DecodeLimits(
            max_raw_bytes=max(config.max_candidates * 8, config.max_request_feature_bytes),
            max_total_raw_bytes=config.max_candidates * 8 + 8 + config.max_request_feature_bytes,
            max_tensors=config.max_request_features + 2,
        )

    async def server_live(
        self, request: oip_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ServerLiveResponse:
        return oip_pb2.ServerLiveResponse(live=True)

    async def server_ready(
        self, request: oip_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ServerReadyResponse:
        # As gRPC health says: ready while serving; a partition without a serving leaf makes
        # only its own models not ready (ModelReady).
        return oip_pb2.ServerReadyResponse(ready=True)

    async def server_metadata(
        self, request: oip_pb2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ServerMetadataResponse:
        return oip_pb2.ServerMetadataResponse(name=SERVER_NAME, version=package_version())

    def _served(self, model: str) -> tuple[str, ...] | None:
        """The versions the model's partition serves now, oldest first (None: model unknown
        here, or no leaf of its partition serving)."""
        partition = self._partition_of.get(model)
        if partition is None:
            return None
        health = self._partition_health().get(partition)
        if health is None or health.serving == 0:
            return None
        served = self._engine.leaves[partition].served_versions(model)
        return tuple(sorted(served or (), key=version_key))

    async def model_ready(
        self, request: oip_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ModelReadyResponse:
        served = self._served(request.name)
        ready = bool(served) and (not request.version or request.version in (served or ()))
        return oip_pb2.ModelReadyResponse(ready=ready)

    async def model_metadata(
        self, request: oip_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip_pb2.ModelMetadataResponse:
        try:
            if request.name not in self._partition_of:
                raise ModelNotFound(request.name)
            served = self._served(request.name) or ()
            if request.version and request.version not in served:
                raise VersionNotServed(
                    f"model {request.name!r} version {shown(request.version)} is not served (served: {list(served)})"
                )
            version = request.version or latest_version(served) or ""
            entry = await asyncio.to_thread(self._bundle_entry, request.name, version)
        except Exception as exc:
            code, message = status_of(exc)
            await abort(context, code, message)
        response = oip_pb2.ModelMetadataResponse(name=request.name, versions=served, platform=PLATFORM)
        response.inputs.add(name=CANDIDATE_IDS, datatype=_ID_DATATYPE, shape=[-1])
        response.inputs.add(name=USER_ID, datatype=_ID_DATATYPE, shape=[1])
        for name in entry.output_names if entry is not None else ():
            response.outputs.add(name=name, datatype=OUTPUT_DATATYPE, shape=[-1])
        return response

    def _bundle_entry(self, model: str, version: str) -> ModelVersion | None:
        """The model's entry for ``version`` (else its latest) in the first bundle listing it,
        read from the file now (metadata calls are rare; the file is the trimmer's too)."""
        for name in sorted(self._bundles):
            try:
                bundle = parse_bundle(self._bundles[name].read_bytes())
            except (OSError, BundleError):
                continue
            versions = bundle.models.get(model)
            if versions:
                return next((v for v in versions if v.version == version), versions[-1])
        return None

    async def model_infer(self, wire: WireInfer, context: grpc.aio.ServicerContext) -> oip_pb2.ModelInferResponse:
        start = time.perf_counter()
        request = wire.message
        request_id = request.id or uuid.uuid4().hex
        code = grpc.StatusCode.OK
        try:
            if wire.error:
                raise InvalidRequest(wire.error)
            try:
                score_input, raw = self._score_input(request, request_id)
            except oip.OipError as exc:
                raise InvalidRequest(str(exc)) from None
            (outcome,) = await self._engine.score(score_input, context.time_remaining())
            if outcome.error_code != grpc.StatusCode.OK:
                code = outcome.error_code
                await abort(context, outcome.error_code, outcome.error_message)
            outputs = {t.name: codec.decode(t) for t in outcome.outputs}
            try:
                names = oip.requested_outputs(request, list(outputs))
            except oip.OipError as exc:
                raise InvalidRequest(str(exc)) from None
            response = oip_pb2.ModelInferResponse(
                model_name=outcome.model, model_version=outcome.version, id=request.id
            )
            oip.write_outputs(response, outputs, names, raw=raw)
            return response
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # the one boundary where errors become status codes
            if code is not grpc.StatusCode.OK:
                raise  # the model's own error, already aborted with
            code, message = status_of(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("OIP request %s failed", request_id)
            await abort(context, code, message)
        finally:
            metrics.child(metrics.REQUESTS, code.name).inc()
            metrics.REQUEST_SECONDS.observe(time.perf_counter() - start)

    def _score_input(self, request: oip_pb2.ModelInferRequest, request_id: str) -> tuple[ScoreInput, bool]:
        """The ``Root/Score`` input of one OIP request (headers checked before any payload)."""
        if not request.model_name:
            raise InvalidRequest("model_name must not be empty")
        headers = oip.read_headers(request, self._limits)
        by_name = {t.name: position for position, t in enumerate(headers.tensors)}
        for name, rank in ((CANDIDATE_IDS, 1), (USER_ID, 1)):
            position = by_name.get(name)
            if position is None:
                raise InvalidRequest(f"input {name!r} is required (INT64, {'[N]' if name == CANDIDATE_IDS else '[1]'})")
            spec = request.inputs[position]
            if spec.datatype != _ID_DATATYPE or len(spec.shape) != rank:
                raise InvalidRequest(f"input {name!r}: {spec.datatype}{list(spec.shape)}, expected {_ID_DATATYPE} of rank 1")
        if list(request.inputs[by_name[USER_ID]].shape) != [1]:
            raise InvalidRequest(f"input {USER_ID!r}: shape {list(request.inputs[by_name[USER_ID]].shape)}, expected [1]")
        data = oip.payloads(request, headers)
        ids = np.frombuffer(data[by_name[CANDIDATE_IDS]], "<i8")
        user = int(np.frombuffer(data[by_name[USER_ID]], "<i8")[0])
        if user < 0 or (ids < 0).any():
            raise InvalidRequest(f"{CANDIDATE_IDS!r} and {USER_ID!r} must be >= 0")
        features = tuple(
            t.tensor(data[p]) for p, t in enumerate(headers.tensors) if t.name not in (CANDIDATE_IDS, USER_ID)
        )
        version = request.model_version or None
        return (
            ScoreInput(
                request_id=request_id,
                user_id=user,
                candidate_ids=ids.astype(np.uint64),
                models=(ModelRef(request.model_name, version),),
                request_tensors=features,
            ),
            headers.raw,
        )
