"""Shadow traffic: a production root mirrors a sample of its Score requests to a canary root.

The production request is never delayed or failed by the mirror. ``offer`` runs after the
production answer is built and costs O(1): a sample draw, a token bucket (``max_per_s``) and
an in-flight bound (``max_in_flight``); whatever does not fit is dropped and counted. The
mirrored call then runs as a background task with its own deadline; its answer is never
returned to anyone, only compared with the production answer per model (first output, max
absolute difference against ``max_score_diff``) and counted, which is what the rollout's
shadow analysis reads. The mirror's channel and tasks belong to the root's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable

import grpc
import numpy as np

from protos.rootleaf.v1 import root_pb2, root_pb2_grpc
from root import metrics
from root.config import ShadowConfig
from transport.server import GRPC_OPTIONS
from transport.tls import PLAINTEXT, TlsConfig, aio_channel
from wire.codec import CodecError, decode

log = logging.getLogger(__name__)

SHADOW_METADATA = ("x-rootleaf-shadow", "1")
"""Sent with every mirrored call, so the canary's logs can tell mirrored traffic apart."""


def compare(production: root_pb2.ScoreResponse, canary: root_pb2.ScoreResponse | None,
            max_diff: float) -> dict[str, str]:
    """Per model: ``match``, ``differ``, ``canary_error`` (the canary failed where production
    answered) or ``production_error`` (nothing to compare). ``canary`` None: the call failed."""
    theirs = {r.model: r for r in canary.results} if canary is not None else {}
    out: dict[str, str] = {}
    for mine in production.results:
        if mine.error_code != 0 or not mine.outputs:
            out[mine.model] = "production_error"
            continue
        other = theirs.get(mine.model)
        if other is None or other.error_code != 0 or not other.outputs:
            out[mine.model] = "canary_error"
            continue
        try:
            a = np.asarray(decode(mine.outputs[0]), dtype=np.float64)
            b = np.asarray(decode(other.outputs[0]), dtype=np.float64)
        except CodecError:
            out[mine.model] = "canary_error"
            continue
        if a.shape != b.shape or not np.isfinite(b).all():
            out[mine.model] = "differ"
        else:
            out[mine.model] = "match" if float(np.max(np.abs(a - b), initial=0.0)) <= max_diff else "differ"
    return out


class ShadowMirror:
    """Mirrors sampled requests to ``config.target``; owned by the root's event loop."""

    def __init__(self, config: ShadowConfig, tls: TlsConfig = PLAINTEXT, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._tls = tls
        self._rng = rng or random.Random()
        self._clock = clock
        self._tokens = config.max_per_s
        self._refilled = clock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._channel: grpc.aio.Channel | None = None
        self._stub: root_pb2_grpc.RootStub | None = None

    def offer(self, request: root_pb2.ScoreRequest, response: root_pb2.ScoreResponse) -> None:
        """Maybe mirror ``request`` (answered with ``response``); never raises, never waits."""
        try:
            cfg = self.config
            if not cfg.enabled or self._rng.random() >= cfg.sample:
                return
            now = self._clock()
            self._tokens = min(cfg.max_per_s, self._tokens + (now - self._refilled) * cfg.max_per_s)
            self._refilled = now
            if self._tokens < 1.0:
                metrics.child(metrics.SHADOW_REQUESTS, "dropped_rate").inc()
                return
            if len(self._tasks) >= cfg.max_in_flight:
                metrics.child(metrics.SHADOW_REQUESTS, "dropped_in_flight").inc()
                return
            self._tokens -= 1.0
            if self._stub is None:
                self._channel = aio_channel(cfg.target, self._tls, list(GRPC_OPTIONS))
                self._stub = root_pb2_grpc.RootStub(self._channel)
            task = asyncio.get_running_loop().create_task(self._mirror(self._stub, request, response),
                                                          name="root-shadow-mirror")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            metrics.child(metrics.SHADOW_REQUESTS, "sent").inc()
        except Exception:  # the mirror must never fail the production request
            log.exception("shadow: could not mirror request %s", request.request_id)

    async def _mirror(self, stub: root_pb2_grpc.RootStub, request: root_pb2.ScoreRequest,
                      response: root_pb2.ScoreResponse) -> None:
        try:
            reply: root_pb2.ScoreResponse | None = await stub.Score(
                request, timeout=self.config.timeout_s, metadata=(SHADOW_METADATA,))
        except grpc.aio.AioRpcError as exc:
            reply = None
            log.debug("shadow: mirrored %s failed: %s", request.request_id, exc.code().name)
        try:
            for model, outcome in compare(response, reply, self.config.max_score_diff).items():
                metrics.child(metrics.SHADOW_RESULTS, model, outcome).inc()
        except Exception:
            log.exception("shadow: could not compare request %s", request.request_id)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel outstanding mirrored calls and close the channel."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
