"""How the root reaches one leaf partition: the ``LeafClient`` interface and two variants.

``GrpcLeafClient`` keeps one ``grpc.aio`` channel per target (TLS when configured), sends
the pre-assembled request bytes as they are (identity request serializer), round-robins over
the targets that passed the last health check, and retries once on another target when a
call finds its target UNAVAILABLE and time remains. It also knows which model versions each
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
from root.errors import LeafCallError
from root.hedging import TargetLatency

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
    ) -> None:
        if not targets:
            raise ValueError("GrpcLeafClient needs at least one target")
        self.targets = tuple(targets)
        self.name = name
        self.latency: TargetLatency | None = TargetLatency(len(self.targets)) if hedging else None
        """Observed latency per target (choice and hedging); None = plain round-robin."""
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
        deadline = time.monotonic() + timeout_s
        index = self._pick(model=model, version=version)
        if index is None:
            raise self._unroutable(model, version)

        def refused(target: int) -> None:
            if version:
                self._strike(target, model, version)

        try:
            response: leaf_pb2.LeafResponse
            response, index = await self._first_answer(
                self._score, index, payload, deadline, lambda i: self._pick(exclude=i, model=model, version=version),
                refused=refused,
            )
            return response
        except grpc.aio.AioRpcError as exc:
            error = _error_of(exc)
            remaining = deadline - time.monotonic()
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and version:
                self._strike(index, model, version)
            if exc.code() != grpc.StatusCode.UNAVAILABLE or len(self.targets) == 1 or remaining <= 0:
                raise error from None
        # One retry on another target: the first was unreachable, the request never ran there.
        if index in self._healthy:
            self._healthy.remove(index)
            self._update_served()
        index = self._pick(exclude=index, model=model, version=version)
        if index is None:
            raise error
        try:
            response = await self._timed(self._score, index, payload, remaining)
            return response
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and version:
                self._strike(index, model, version)
            raise _error_of(exc) from None

    async def score_partition(
        self, payload: bytes, timeout_s: float, models: Sequence[tuple[str, str]] = ()
    ) -> leaf_pb2.PartitionResponse:
        deadline = time.monotonic() + timeout_s
        index = self._pick(models=models)
        assert index is not None  # without a version filter some target is always chosen
        try:
            response: leaf_pb2.PartitionResponse
            response, index = await self._first_answer(
                self._score_partition, index, payload, deadline,
                lambda i: self._pick(exclude=i, models=models, all_models=True),
                refused_in=lambda response, i: self._strike_refusals(response, i, models),
            )
        except grpc.aio.AioRpcError as exc:
            error = _error_of(exc)
            remaining = deadline - time.monotonic()
            if exc.code() != grpc.StatusCode.UNAVAILABLE or len(self.targets) == 1 or remaining <= 0:
                raise error from None
            # One retry on another target: the first was unreachable, the request never ran there.
            if index in self._healthy:
                self._healthy.remove(index)
                self._update_served()
            index = self._pick(exclude=index, models=models)
            if index is None:
                raise error from None
            try:
                response = await self._timed(self._score_partition, index, payload, remaining)
            except grpc.aio.AioRpcError as retry_exc:
                raise _error_of(retry_exc) from None
            self._strike_refusals(response, index, models)
        return response

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

    async def _timed(self, stubs: Sequence[Any], index: int, payload: bytes, timeout_s: float) -> Any:
        """One call through ``stubs[index]``, its latency observed (a call cut short by its
        hedge or its deadline counts longer: see ``root.hedging``)."""
        started = time.monotonic()
        ok = overtaken = False
        try:
            response = await stubs[index](payload, timeout=timeout_s)
            ok = True
            return response
        except asyncio.CancelledError:
            overtaken = True  # its hedge answered first (or the whole request was cancelled)
            raise
        finally:
            if self.latency is not None:
                self.latency.observe(index, time.monotonic() - started, ok, overtaken)

    async def _first_answer(
        self,
        stubs: Sequence[Any],
        index: int,
        payload: bytes,
        deadline: float,
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
        copy fails too. Raises the primary's ``AioRpcError`` when both fail."""
        remaining = deadline - time.monotonic()
        latency = self.latency
        delay = latency.hedge_delay_s() if latency is not None and len(self.targets) > 1 else None
        if latency is None or delay is None or delay >= remaining:
            if latency is not None:
                latency.record_call(hedged=False)
            answer = await self._timed(stubs, index, payload, remaining)
            if refused_in is not None:
                refused_in(answer, index)
            return answer, index
        primary = asyncio.create_task(self._timed(stubs, index, payload, remaining), name="root-leaf-call")
        started: dict[asyncio.Task[Any], int] = {primary: index}
        try:
            done, _ = await asyncio.wait(started, timeout=delay)
            other = None if done else pick_other(index)
            latency.record_call(hedged=other is not None)
            if other is not None:
                metrics.LEAF_HEDGES.labels(self.name).inc()
                hedge = asyncio.create_task(
                    self._timed(stubs, other, payload, deadline - time.monotonic()), name="root-leaf-hedge"
                )
                started[hedge] = other
            pending = set(started)
            refusing: tuple[Any, int] | None = None
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is None:
                        if refused_in is None or not refused_in(task.result(), started[task]):
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
