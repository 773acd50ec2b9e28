"""One model's call after admission, shared by ``Leaf/Score`` and OIP ``ModelInfer``: the
in-flight hold, decoding, the deadline check, the batcher, and the call's outcome metrics.

The hold covers the received message and the admitted inputs at N rows; the batcher keeps
its share (``hold.retain``) until it lets go of the inputs, even when the call is cancelled.
Runs on the server's event loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, NoReturn

import grpc

from leaf import metrics
from leaf.admission import InflightBytes
from leaf.batcher import Batcher, Outputs
from leaf.converter import Admitted
from leaf.errors import DeadlineExpired, LeafError, to_status
from leaf.model import LoadedVersion
from transport import tracing
from transport.status import abort

__all__ = ["CallOutcome", "run_admitted"]

log = logging.getLogger(__name__)


async def run_admitted(
    loaded: LoadedVersion,
    admitted: Admitted,
    payloads: Callable[[], Mapping[int, memoryview] | None],
    *,
    message_bytes: int,
    request_id: str,
    context: grpc.aio.ServicerContext,
    inflight: InflightBytes,
    batcher: Batcher,
) -> Outputs:
    """Hold, decode (``payloads()`` runs under the hold), queue and await the outputs."""
    with inflight.hold(message_bytes + admitted.cost.row_bytes) as hold:
        decoding = tracing.clock()
        inputs = loaded.converter.decode(admitted, payloads())
        metrics.RECEIVED_BYTES.labels(loaded.model, "decoded").inc(inputs.decoded_bytes)
        tracing.record("decode", decoding, {"bytes": inputs.decoded_bytes})
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExpired("deadline passed before the request was queued")
        deadline = None if remaining is None else time.monotonic() + remaining
        future = batcher.submit(loaded, inputs, deadline, request_id, hold.release)
        hold.retain()
        return await future


@dataclass(slots=True)
class CallOutcome:
    """The labels a call's metrics carry (known once the version resolves) and its end."""

    started: float = field(default_factory=time.perf_counter)
    model: str = metrics.UNKNOWN_MODEL_LABEL
    version: str = ""

    def served(self, loaded: LoadedVersion) -> None:
        self.model, self.version = loaded.model, loaded.version

    def cancelled(self) -> None:
        metrics.REQUESTS.labels(self.model, self.version, grpc.StatusCode.CANCELLED.name).inc()

    def finished(self, code: grpc.StatusCode = grpc.StatusCode.OK) -> None:
        metrics.REQUESTS.labels(self.model, self.version, code.name).inc()
        metrics.REQUEST_SECONDS.labels(self.model).observe(time.perf_counter() - self.started)

    async def fail(self, exc: Exception, context: grpc.aio.ServicerContext, what: str) -> NoReturn:
        """Count the failure and end the call with its status; a non-``LeafError`` is a bug
        and is logged with its traceback (model failures are logged by the batcher)."""
        status = to_status(exc)
        if not isinstance(exc, LeafError):
            log.exception("%s failed", what)
        self.finished(status.code)
        await abort(context, status.code, status.message)

