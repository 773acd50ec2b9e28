"""How the root reaches one leaf partition: the ``LeafClient`` interface and two variants.

``GrpcLeafClient`` keeps one ``grpc.aio`` channel per target (TLS when configured), sends
the pre-assembled request bytes as they are (identity request serializer), round-robins over
the targets that passed the last health check, and bounds each attempt by the partition's
own timeout as well as the caller's deadline (``root.partition_timeout``: a hung leaf costs
a call that long, not the client's deadline); it retries once on another target when an
attempt finds its target UNAVAILABLE, or ran out of the partition's timeout, and the
caller's deadline leaves time. It also knows which model versions each
target has loaded (``Leaf/ListModels`` at every health round) and sends a request naming a
version only to targets that have it, so replicas that briefly disagree during a rollout
never get a request trimmed for a version they do not run; a target that answers
FAILED_PRECONDITION (version not loaded) is struck off for that version at once. A partition
call (``score_partition``) goes to a target that has every named version if one does (else
to any: the models it lacks come back FAILED_PRECONDITION in their own replies, and are
struck off the same way). With ``hedging`` (root config, on by default) the target is the
faster of two by observed latency instead of round-robin, and a call (either kind) still
unanswered after the partition's recent p95 is sent again to another target
(``root.hedging``): a slow replica does not hold the partition's tail latency hostage. A
hedge goes only to a target known to have every version the call names, and an answer that
refuses a named version does not win over the other copy still running: during a rollout
the replica that has the new version may be the slow one.
It raises ``LeafCallError``. (An in-process variant for tests lives in ``tests/doubles.py``.)
State is owned by the root's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Protocol, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.rootleaf.v1 import leaf_pb2
from transport.tls import PLAINTEXT, TlsConfig, aio_channel
from transport.server import GRPC_OPTIONS
from root import metrics
from root.config import PartitionTimeoutConfig
from root.errors import LeafCallError
from root.hedging import TargetLatency, counts_against
from root.partition_timeout import Attempt, PartitionTimeout

log = logging.getLogger(__name__)
_FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]

LEAF_SCORE_METHOD = "/rootleaf.v1.Leaf/Score"
LEAF_SCORE_PARTITION_METHOD = "/rootleaf.v1.Leaf/ScorePartition"
LEAF_LIST_MODELS_METHOD = "/rootleaf.v1.Leaf/ListModels"
LEAF_SERVICE = "rootleaf.v1.Leaf"
# A restarted leaf is reconnected to within about a second: gRPC's default backoff grows to
# 120 s, which would keep a partition failing long after its leaf came back.
# Requests that find the root's view of loaded versions stale trigger a ListModels round;
# rounds closer together than this are shared.
MIN_REFRESH_INTERVAL_S = 0.05
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class LeafClient(Protocol):
    """Sends serialised ``LeafRequest`` bytes to one partition."""

    async def score(
        self, payload: bytes, timeout_s: float, model: str = "", version: str = ""
    ) -> leaf_pb2.LeafResponse:
        """The leaf's response; raises ``LeafCallError`` (with the status code) on failure.

        ``model``/``version`` (as named in the payload) restrict the call to targets known
        to have that version loaded."""
        ...

    async def score_partition(
        self, payload: bytes, timeout_s: float, models: Sequence[tuple[str, str]] = ()
    ) -> leaf_pb2.PartitionResponse:
        """Serialised ``PartitionRequest`` -> one reply per model (``LeafCallError`` when the
        call as a whole fails). ``models`` (name, version) as named in the payload steer the
        call to a target that has them all loaded."""
        ...

    def served_versions(self, model: str) -> frozenset[str] | None:
        """Versions of ``model`` loaded by the partition's serving targets; None = not known."""
        ...

    async def check_ready(self, timeout_s: float) -> int:
        """Health-check every target and refresh its loaded versions; how many are serving."""
        ...

    async def refresh_versions(self, timeout_s: float) -> None:
        """Ask every target which versions it has loaded now (one round shared by callers)."""
        ...

    async def close(self) -> None:
        """Close channels; pending calls are cancelled."""
        ...


def _error_of(exc: grpc.aio.AioRpcError) -> LeafCallError:
    code = exc.code()
    if code == grpc.StatusCode.CANCELLED:
        # Our own cancellation surfaces as asyncio.CancelledError, never as an RPC error: a
        # CANCELLED status means the leaf dropped the call (it is shutting down), so for the
        # client this partition is unavailable, not a call it cancelled.
        return LeafCallError(grpc.StatusCode.UNAVAILABLE, f"leaf cancelled the call: {exc.details() or 'CANCELLED'}")
    return LeafCallError(code, exc.details() or code.name)


class _Race:
    """A hedged call: ``overtaken`` once its hedge answered first (the primary, then
    cancelled, would have taken longer still)."""

    __slots__ = ("overtaken",)

    def __init__(self) -> None:
        self.overtaken = False


class GrpcLeafClient:
    """Leaf partition reached over gRPC, round-robin over its targets."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        options: Sequence[tuple[str, object]] = (),
        tls: TlsConfig = PLAINTEXT,
        hedging: bool = False,
        name: str = "",
        timeout: PartitionTimeoutConfig = PartitionTimeoutConfig(),
    ) -> None:
        if not targets:
            raise ValueError("GrpcLeafClient needs at least one target")
        self.targets = tuple(targets)
        self.name = name
        self.latency: TargetLatency | None = TargetLatency(len(self.targets)) if hedging else None
        """Observed latency per target (choice and hedging); None = plain round-robin."""
        self.timeout = PartitionTimeout(timeout)
        """The partition's own timeout for each attempt (``root.partition_timeout``)."""
        channel_options = [*GRPC_OPTIONS, ("grpc.lb_policy_name", "round_robin"), *RECONNECT_OPTIONS, *options]
        self._channels = [aio_channel(t, tls, channel_options) for t in self.targets]
        self._score = [
            ch.unary_unary(
                LEAF_SCORE_METHOD,
                request_serializer=None,  # the payload is already the serialised LeafRequest
                response_deserializer=leaf_pb2.LeafResponse.FromString,
            )
            for ch in self._channels
        ]
        self._score_partition = [
            ch.unary_unary(
                LEAF_SCORE_PARTITION_METHOD,
                request_serializer=None,  # the payload is already the serialised PartitionRequest
                response_deserializer=leaf_pb2.PartitionResponse.FromString,
            )
            for ch in self._channels
        ]
        self._list_models = [
            ch.unary_unary(
                LEAF_LIST_MODELS_METHOD,
                request_serializer=leaf_pb2.ListModelsRequest.SerializeToString,
                response_deserializer=leaf_pb2.ListModelsResponse.FromString,
            )
            for ch in self._channels
        ]
        self._health = [health_pb2_grpc.HealthStub(ch) for ch in self._channels]
        self._healthy = list(range(len(self.targets)))
        self._next = 0
        # Per target: model -> versions it has loaded (None until its ListModels answered).
        self._loaded: list[dict[str, frozenset[str]] | None] = [None] * len(self.targets)
        self._served: dict[str, frozenset[str]] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0

    def _has(self, index: int, model: str, version: str) -> bool:
        loaded = self._loaded[index]
        # A target whose versions are not known yet may be tried: it refuses what it lacks.
        return loaded is None or version in loaded.get(model, ())

    def _pick(
        self, exclude: int | None = None, model: str = "", version: str = "",
        models: Sequence[tuple[str, str]] = (), all_models: bool = False,
    ) -> int | None:
        """A target for the call, round-robin: a serving one that has ``version`` if any,
        else any that has it; None when no target has it. With ``models`` (a partition
        call) targets that have every named version come first, else any target (none with
        ``all_models``: a hedge to a target that lacks a version could only be refused)."""
        others = [i for i in range(len(self.targets)) if i != exclude]
        if version:
            others = [i for i in others if self._has(i, model, version)]
        if models:
            having = [i for i in others if all(self._has(i, m, v) for m, v in models if v)]
            others = having if having or all_models else others
        pool = [i for i in others if i in self._healthy] or others
        if not pool:
            return None
        if self.latency is not None:
            return self.latency.choose(pool)
        index = pool[self._next % len(pool)]
        self._next += 1
        return index

    def _unroutable(self, model: str, version: str) -> LeafCallError:
        return LeafCallError(
            grpc.StatusCode.FAILED_PRECONDITION, f"no target has model {model!r} version {version!r} loaded"
        )

    async def score(
        self, payload: bytes, timeout_s: float, model: str = "", version: str = ""
    ) -> leaf_pb2.LeafResponse:
        index = self._pick(model=model, version=version)
        if index is None:
            raise self._unroutable(model, version)

        def refused(target: int) -> None:
            if version:
                self._strike(target, model, version)

        def other(index: int, timed_out: bool = False) -> int | None:
            return self._pick(exclude=index, model=model, version=version)

        response: leaf_pb2.LeafResponse = await self._call(
            self._score, index, payload, timeout_s, other, other, refused=refused
        )
        return response

    async def score_partition(
        self, payload: bytes, timeout_s: float, models: Sequence[tuple[str, str]] = ()
    ) -> leaf_pb2.PartitionResponse:
        index = self._pick(models=models)
        assert index is not None  # without a version filter some target is always chosen
        response: leaf_pb2.PartitionResponse = await self._call(
            self._score_partition, index, payload, timeout_s,
            lambda i: self._pick(exclude=i, models=models, all_models=True),
            # Unreachable: any other target (one that lacks a version refuses just that
            # model); timed out (it may still answer): only one known to have every version.
            lambda i, timed_out: self._pick(exclude=i, models=models, all_models=timed_out),
            refused_in=lambda response, i: self._strike_refusals(response, i, models),
        )
        return response

    async def _call(
        self,
        stubs: Sequence[Any],
        index: int,
        payload: bytes,
        timeout_s: float,
        pick_other: Callable[[int], int | None],
        pick_retry: Callable[[int, bool], int | None],
        *,
        refused: Callable[[int], None] | None = None,
        refused_in: Callable[[Any, int], bool] | None = None,
    ) -> Any:
        """A call to ``index`` (hedged: ``_first_answer``), each attempt bounded by the
        partition's timeout and the caller's ``timeout_s``, and at most one retry on
        ``pick_retry(index, timed_out)`` (see ``_retry``). A target that refuses a version
        is reported to ``refused`` (an RPC error) or ``refused_in`` (replies in an answer)."""
        deadline = time.monotonic() + timeout_s
        attempt = self.timeout.attempt_deadline(deadline)
        try:
            answer, index = await self._first_answer(
                stubs, index, payload, attempt, pick_other, refused=refused, refused_in=refused_in
            )
            return answer
        except grpc.aio.AioRpcError as exc:
            error = self._call_error(exc, attempt)
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and refused is not None:
                refused(index)
            if not self._retry(exc, attempt, index, deadline):
                raise error from None
            retry = pick_retry(index, exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED)
            if retry is None:
                raise error from None
        attempt = self.timeout.attempt_deadline(deadline)
        try:
            answer = await self._start(stubs, retry, payload, attempt)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and refused is not None:
                refused(retry)
            raise self._call_error(exc, attempt) from None
        if refused_in is not None:
            refused_in(answer, retry)
        return answer

    def _retry(self, exc: grpc.aio.AioRpcError, attempt: Attempt, index: int, deadline: float) -> bool:
        """Whether a failed first attempt goes once more to another target: when its target
        was unreachable (the request never ran there; it is struck off until the next health
        round), or the partition's own timeout ended it (scoring is idempotent) and the
        caller's deadline leaves time."""
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE and index in self._healthy and len(self.targets) > 1:
            self._healthy.remove(index)
            self._update_served()
        own_timeout = code == grpc.StatusCode.DEADLINE_EXCEEDED and attempt.own
        return (code == grpc.StatusCode.UNAVAILABLE or own_timeout) and len(self.targets) > 1 \
            and deadline > time.monotonic()

    def _call_error(self, exc: grpc.aio.AioRpcError, attempt: Attempt) -> LeafCallError:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and attempt.own:
            return LeafCallError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer within the partition timeout ({1000 * self.timeout.timeout_s():.0f} ms now)",
            )
        return _error_of(exc)

    def _strike_refusals(
        self, response: leaf_pb2.PartitionResponse, index: int, models: Sequence[tuple[str, str]]
    ) -> bool:
        """Strike off the named versions that target ``index`` refused in its replies
        (FAILED_PRECONDITION); whether there were any."""
        refusals = False
        for (model, version), reply in zip(models, response.models):
            if reply.error_code == _FAILED_PRECONDITION and version:
                self._strike(index, model, version)
                refusals = True
        return refusals

    def _start(
        self, stubs: Sequence[Any], index: int, payload: bytes, attempt: Attempt, race: _Race | None = None,
        name: str = "root-leaf-call",
    ) -> asyncio.Task[Any]:
        """``_timed`` as a task, counted in flight on its target from now until it is done
        (so the next pick, even within the same loop turn, sees it)."""
        task = asyncio.create_task(self._timed(stubs, index, payload, attempt, race), name=name)
        latency = self.latency
        if latency is not None:
            latency.begin(index)
            task.add_done_callback(lambda _: latency.end(index))
        return task

    async def _timed(
        self, stubs: Sequence[Any], index: int, payload: bytes, attempt: Attempt, race: _Race | None = None
    ) -> Any:
        """One call through ``stubs[index]`` until ``attempt`` ends, its latency observed: an
        answer for the partition's timeout and the target's mean, a call its hedge
        overtook (``race``) and a failure that ``counts_against`` the target for its mean
        only (see ``root.hedging``); nothing else, so no caller's deadline steers the choice."""
        started = time.monotonic()
        latency = self.latency
        try:
            response = await stubs[index](payload, timeout=attempt.remaining())
        except asyncio.CancelledError:
            if latency is not None and race is not None and race.overtaken:  # not the caller cancelling
                latency.observe(index, time.monotonic() - started, ok=False, overtaken=True)
            raise
        except grpc.aio.AioRpcError as exc:
            if latency is not None and counts_against(exc.code(), attempt.own):
                latency.observe(index, time.monotonic() - started, ok=False)
            raise
        elapsed = time.monotonic() - started
        self.timeout.observe(elapsed)
        if latency is not None:
            latency.observe(index, elapsed)
        return response

    async def _first_answer(
        self,
        stubs: Sequence[Any],
        index: int,
        payload: bytes,
        attempt: Attempt,
        pick_other: Callable[[int], int | None],
        *,
        refused: Callable[[int], None] | None = None,
        refused_in: Callable[[Any, int], bool] | None = None,
    ) -> tuple[Any, int]:
        """The call to ``index``, hedged: still unanswered after the partition's hedge delay,
        a copy goes to ``pick_other(index)``; the first answer wins (returned with the target
        that gave it) and the other call is cancelled. A hedge refused FAILED_PRECONDITION is
        reported to ``refused``. Every answer is shown to ``refused_in(answer, target)``; one
        for which it is true (it refuses a version in its replies) wins only if the other
        copy fails too. Both copies end with ``attempt``. Raises the primary's
        ``AioRpcError`` when both fail."""
        latency = self.latency
        delay = latency.hedge_delay_s() if latency is not None and len(self.targets) > 1 else None
        if latency is None or delay is None or delay >= attempt.remaining():
            if latency is not None:
                latency.record_call(hedged=False)
            answer = await self._start(stubs, index, payload, attempt)
            if refused_in is not None:
                refused_in(answer, index)
            return answer, index
        race = _Race()
        primary = self._start(stubs, index, payload, attempt, race)
        started: dict[asyncio.Task[Any], int] = {primary: index}
        try:
            done, _ = await asyncio.wait(started, timeout=delay)
            other = None if done else pick_other(index)
            latency.record_call(hedged=other is not None)
            if other is not None:
                metrics.LEAF_HEDGES.labels(self.name).inc()
                # No race for the hedge: cancelled when the primary answers first, it had less time.
                hedge = self._start(stubs, other, payload, attempt, name="root-leaf-hedge")
                started[hedge] = other
            pending = set(started)
            refusing: tuple[Any, int] | None = None
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is None:
                        if refused_in is None or not refused_in(task.result(), started[task]):
                            race.overtaken = task is not primary  # the primary is cancelled below
                            return task.result(), started[task]
                        refusing = refusing or (task.result(), started[task])
                    elif task is not primary and refused is not None and isinstance(error, grpc.aio.AioRpcError) \
                            and error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        refused(started[task])
            if refusing is not None:
                return refusing
            return primary.result(), index  # both failed: raises the primary's error
        finally:
            for task in started:
                task.cancel()
            await asyncio.gather(*started, return_exceptions=True)

    def _strike(self, index: int, model: str, version: str) -> None:
        """Target ``index`` said it has not loaded ``version``: stop routing it there."""
        loaded = self._loaded[index]
        self._refreshed_at = 0.0  # what the last round said is out of date: refresh again
        if loaded is None:
            return  # nothing known to correct; the caller refreshes before re-resolving
        loaded[model] = loaded.get(model, frozenset()) - {version}
        self._update_served()

    def _update_served(self) -> None:
        known = [i for i in range(len(self.targets)) if self._loaded[i] is not None]
        if not known:
            self._served = None
            return
        serving = [i for i in known if i in self._healthy] or known
        served: dict[str, set[str]] = {}
        for i in serving:
            for model, versions in (self._loaded[i] or {}).items():
                served.setdefault(model, set()).update(versions)
        self._served = {model: frozenset(versions) for model, versions in served.items()}

    def served_versions(self, model: str) -> frozenset[str] | None:
        served = self._served
        if served is None:
            return None
        return served.get(model, frozenset())

    async def _list_one(self, index: int, timeout_s: float) -> None:
        try:
            reply = await self._list_models[index](leaf_pb2.ListModelsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return  # keep what was known: an unreachable target is routed around by health
        self._loaded[index] = {m.name: frozenset(m.versions) for m in reply.models}

    async def _check_one(self, index: int, timeout_s: float) -> bool:
        try:
            reply = await self._health[index].Check(
                health_pb2.HealthCheckRequest(service=LEAF_SERVICE), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def refresh_versions(self, timeout_s: float) -> None:
        task = self._refreshing
        if task is not None and task.done() and time.monotonic() - self._refreshed_at < MIN_REFRESH_INTERVAL_S:
            return  # just refreshed: a burst of stale requests shares one round
        if task is None or task.done():
            indices = range(len(self.targets))
            task = self._refreshing = asyncio.create_task(
                self._list_all(indices, timeout_s), name="root-leaf-versions"
            )
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            pass  # routing goes on with what is known; the round finishes in the background

    async def _list_all(self, indices: Sequence[int], timeout_s: float) -> None:
        await asyncio.gather(*(self._list_one(i, timeout_s) for i in indices))
        self._refreshed_at = time.monotonic()
        self._update_served()

    async def check_ready(self, timeout_s: float) -> int:
        indices = range(len(self.targets))
        results, _ = await asyncio.gather(
            asyncio.gather(*(self._check_one(i, timeout_s) for i in indices)),
            asyncio.gather(*(self._list_one(i, timeout_s) for i in indices)),
        )
        self._healthy = [i for i, ok in enumerate(results) if ok]
        self._update_served()
        return len(self._healthy)

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
        await asyncio.gather(*(ch.close() for ch in self._channels))
