"""How the root reaches one leaf partition: the ``LeafClient`` interface and two variants.

``GrpcLeafClient`` keeps one ``grpc.aio`` channel per target (TLS when configured), sends
the pre-assembled request bytes as they are (identity request serializer), round-robins over
the targets that passed the last health check, and races copies of a call over its targets
(``GrpcLeafClient._call``, the one place that decides when another copy goes out): a copy
that has run for the partition's own timeout (``root.partition_timeout``) counts against its
target and, while it keeps running, a copy goes to another target known to have every
version the call names; the first answer wins, and both end at the caller's deadline. With
no such target the call ends at the partition's timeout (a hung leaf costs a call that long,
not the client's deadline). It retries once on another target when every copy failed, one
found its target UNAVAILABLE and the caller's deadline leaves time. It also knows which
model versions each target has loaded (``Leaf/ListModels`` at every health round) and
sends a request naming a version only to targets that have it, so replicas that briefly
disagree during a rollout never get a request trimmed for a version they do not run; a target that answers
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
from typing import Any, Callable, Collection, Protocol, Sequence

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


class _Copy:
    """One copy of a call in ``GrpcLeafClient._call``'s race: its target, its place in the
    race (0: the first), the partition's timeout for it (``turn``), whether that passed
    (counted against the target; the copy may run on), and whether it counts against its
    target if cancelled (``overtaken``: a copy sent after it answered first)."""

    __slots__ = ("target", "order", "turn", "started", "timed_out", "overtaken")

    def __init__(self, target: int, order: int, turn: Attempt) -> None:
        self.target, self.order, self.turn = target, order, turn
        self.started = time.monotonic()
        self.timed_out = False
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

    def _pool(
        self, exclude: Collection[int] = (), model: str = "", version: str = "",
        models: Sequence[tuple[str, str]] = (), all_models: bool = False,
    ) -> list[int]:
        """The targets a copy of the call may go to: the serving ones that have ``version``
        if any, else any that has it. With ``models`` (a partition call) targets that have
        every named version come first, else any target (none with ``all_models``: a copy
        sent to a target that lacks a version could only be refused)."""
        others = [i for i in range(len(self.targets)) if i not in exclude]
        if version:
            others = [i for i in others if self._has(i, model, version)]
        if models:
            having = [i for i in others if all(self._has(i, m, v) for m, v in models if v)]
            others = having if having or all_models else others
        return [i for i in others if i in self._healthy] or others

    def _choose(self, pool: Sequence[int]) -> int | None:
        """One of ``pool``: the faster of two by observed latency, or round-robin."""
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
        if not self._pool(model=model, version=version):
            raise self._unroutable(model, version)

        def refused(target: int) -> None:
            if version:
                self._strike(target, model, version)

        response: leaf_pb2.LeafResponse = await self._call(
            self._score, payload, timeout_s,
            lambda exclude, complete: self._pool(exclude, model=model, version=version), refused=refused,
        )
        return response

    async def score_partition(
        self, payload: bytes, timeout_s: float, models: Sequence[tuple[str, str]] = ()
    ) -> leaf_pb2.PartitionResponse:
        # The first copy and a retry on an unreachable target go to any target (one that
        # lacks a version refuses just that model); a hedge or a copy at the partition's
        # timeout only to one known to have every version.
        response: leaf_pb2.PartitionResponse = await self._call(
            self._score_partition, payload, timeout_s,
            lambda exclude, complete: self._pool(exclude, models=models, all_models=complete),
            refused_in=lambda response, i: self._strike_refusals(response, i, models),
        )
        return response

    async def _call(
        self,
        stubs: Sequence[Any],
        payload: bytes,
        timeout_s: float,
        pool: Callable[[Collection[int], bool], list[int]],
        *,
        refused: Callable[[int], None] | None = None,
        refused_in: Callable[[Any, int], bool] | None = None,
    ) -> Any:
        """One call, raced over the partition's targets until an answer or the caller's
        ``timeout_s``; ``pool(exclude, complete)`` says where a copy may go (``complete``:
        only targets known to have every version the call names). The only place that
        decides when a call sends another copy:

        - the first copy goes to ``pool((), False)``;
        - a hedge: still unanswered after the partition's hedge delay (``root.hedging``,
          within the hedge budget), a copy goes to a complete target;
        - at the partition's timeout: a copy that has run that long (``root.partition_timeout``)
          counts against its target and, unless another copy is still within its own
          timeout, a copy goes to a complete target not tried yet, while it keeps running;
          when there is none and no other copy runs, it ends there (DEADLINE_EXCEEDED, "no
          answer within the partition timeout");
        - a retry: when every copy failed and one found its target UNAVAILABLE (struck off
          until the next health round), a copy goes to any target not tried yet.

        At most one hedge and one more copy (at the timeout, or the retry) per call, each to a
        target not tried yet. The call counts in the hedge budget once its hedge is decided
        (at once when it cannot hedge), as hedged when it sent a hedge or a copy at the
        timeout (a copy at the timeout of a call counted unhedged adds one entry); the
        budget refuses hedges, never a copy at the timeout. The first answer wins; an answer that refuses a
        version (``refused_in``: replies in an answer) wins only when no other copy runs;
        the others are cancelled, a copy cancelled counting against its target only when a
        copy sent after it answered first and its own timeout had not counted already. A
        copy refused FAILED_PRECONDITION is reported to ``refused``. Raises ``LeafCallError``
        (the first copy's error when every copy failed)."""
        deadline = time.monotonic() + timeout_s
        latency = self.latency
        copies: dict[asyncio.Task[Any], _Copy] = {}
        counted: bool | None = None  # how the call counts in the hedge budget (None: not yet)
        second = False  # the copy at the timeout, or the retry, went out

        def send(complete: bool, kind: str) -> bool:
            """A copy (``kind``: call, hedge, copy at the timeout, retry) to a target not tried."""
            nonlocal counted
            target = self._choose(pool([c.target for c in copies.values()], complete))
            if target is None:
                return False
            copy = _Copy(target, len(copies), self.timeout.attempt_deadline(deadline))
            copies[self._start(stubs, copy, payload, deadline, f"root-leaf-{kind}")] = copy
            if kind in ("hedge", "copy"):
                metrics.LEAF_HEDGES.labels(self.name).inc()
                if latency is not None and not counted:
                    latency.record_call(hedged=True)  # a call counted already: one more entry
                counted = True
            return True

        delay = latency.hedge_delay_s() if latency is not None and len(self.targets) > 1 else None
        hedge_at = None if delay is None else time.monotonic() + delay
        if latency is not None and delay is None:
            latency.record_call(hedged=False)  # counted now: no hedge can follow
            counted = False
        sent = send(False, "call")
        assert sent  # without a version filter some target is always chosen; score() checked its own
        refusing: Any = None
        failures: list[tuple[_Copy, BaseException]] = []
        try:
            while True:
                live = [t for t in copies if not t.done()]
                wakes = [copies[t].turn.deadline for t in live if copies[t].turn.own and not copies[t].timed_out]
                wakes += [] if hedge_at is None else [hedge_at]
                wait = max(0.0, min(wakes) - time.monotonic()) if wakes else None
                done, _ = await asyncio.wait(live, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    copy, error = copies[task], task.exception()
                    if error is None:
                        if refused_in is None or not refused_in(task.result(), copy.target):
                            for loser in copies.values():  # cancelled below
                                loser.overtaken = loser.order < copy.order and not loser.timed_out
                            return task.result()
                        refusing = task.result() if refusing is None else refusing
                    else:
                        failures.append((copy, error))
                        if isinstance(error, grpc.aio.AioRpcError):
                            self._failed(error, copy.target, refused)
                live = [t for t in copies if not t.done()]
                now = time.monotonic()
                if hedge_at is not None and now >= hedge_at:
                    hedge_at = None
                    if not (len(copies) == 1 and live and send(True, "hedge")) and latency is not None \
                            and counted is None:
                        latency.record_call(hedged=False)
                        counted = False
                timed_out = [copies[t] for t in live if copies[t].turn.own and not copies[t].timed_out
                             and copies[t].turn.deadline <= now]
                for copy in timed_out:
                    copy.timed_out = True
                    if latency is not None and counts_against(grpc.StatusCode.DEADLINE_EXCEEDED, own_timeout=True):
                        latency.observe(copy.target, now - copy.started, ok=False)
                if timed_out and all(copies[t].timed_out for t in live):
                    if not second and send(True, "copy"):
                        second = True
                    elif len(live) == 1:  # no other copy, nowhere else to turn: it ends here
                        raise self._own_timeout()
                if live:
                    continue
                if refusing is not None:
                    return refusing
                unreachable = any(isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.UNAVAILABLE
                                  for _, e in failures)
                if unreachable and not second and deadline > now and send(False, "retry"):
                    second = True
                    continue
                first = min(failures, key=lambda f: f[0].order)[1]
                if isinstance(first, grpc.aio.AioRpcError):
                    raise _error_of(first) from None
                raise first
        finally:
            if latency is not None and counted is None:
                latency.record_call(hedged=False)
            for task in copies:
                task.cancel()
            await asyncio.gather(*copies, return_exceptions=True)

    def _failed(self, error: grpc.aio.AioRpcError, target: int, refused: Callable[[int], None] | None) -> None:
        """A copy failed: a target that refused a version, or was unreachable (struck off
        until the next health round), is routed around."""
        code = error.code()
        if code == grpc.StatusCode.FAILED_PRECONDITION and refused is not None:
            refused(target)
        if code == grpc.StatusCode.UNAVAILABLE and target in self._healthy and len(self.targets) > 1:
            self._healthy.remove(target)
            self._update_served()

    def _own_timeout(self) -> LeafCallError:
        return LeafCallError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no answer within the partition timeout ({1000 * self.timeout.timeout_s():.0f} ms now)",
        )

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
        self, stubs: Sequence[Any], copy: _Copy, payload: bytes, deadline: float, name: str
    ) -> asyncio.Task[Any]:
        """``_timed`` as a task, counted in flight on its target from now until it is done
        (so the next pick, even within the same loop turn, sees it)."""
        task = asyncio.create_task(self._timed(stubs, copy, payload, deadline), name=name)
        latency, index = self.latency, copy.target
        if latency is not None:
            latency.begin(index)
            task.add_done_callback(lambda _: latency.end(index))
        return task

    async def _timed(self, stubs: Sequence[Any], copy: _Copy, payload: bytes, deadline: float) -> Any:
        """One copy through ``stubs[copy.target]`` until the caller's ``deadline`` (the race
        in ``_call`` ends it sooner), its latency observed: an answer for the partition's
        timeout and the target's mean, a copy overtaken (``copy.overtaken``) and a failure
        that ``counts_against`` the target for its mean only (see ``root.hedging``; the
        partition's timeout is counted by the race); nothing else, so no caller's deadline
        steers the choice."""
        latency, index = self.latency, copy.target
        try:
            response = await stubs[index](payload, timeout=deadline - time.monotonic())
        except asyncio.CancelledError:
            if latency is not None and copy.overtaken:  # not the caller cancelling
                latency.observe(index, time.monotonic() - copy.started, ok=False, overtaken=True)
            raise
        except grpc.aio.AioRpcError as exc:
            if latency is not None and counts_against(exc.code(), own_timeout=False):
                latency.observe(index, time.monotonic() - copy.started, ok=False)
            raise
        elapsed = time.monotonic() - copy.started
        self.timeout.observe(elapsed)
        if latency is not None:
            latency.observe(index, elapsed)
        return response

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
