"""Dynamic batcher: merges concurrent requests per model version into one forward.

The event loop calls ``submit`` (enqueue under a lock, get an ``asyncio.Future``). One
inference thread per device ("leaf-infer-<device>") owns the forward: it takes the queue
whose head is ready (enough candidates queued, or the head waited ``max_queue_delay``, or
the device was busy while requests piled up), concatenates their inputs, has the version run
them once (``LoadedVersion.run`` checks and splits the outputs per request) and resolves
the futures on their loops, one wake-up per loop once the batch's Python work is done. A
merged forward that fails is rerun request by request, so only the request at fault fails.
Requests whose deadline passed or whose caller went away are dropped before the forward.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from leaf import metrics
from leaf.converter import ConvertedInputs
from leaf.device import Placement, Staged
from leaf.errors import DeadlineExpired, LeafError, ModelFailed, Overloaded, ShuttingDown
from leaf.model import LoadedVersion
from transport import tracing

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How requests are merged (see ``LeafConfig`` for the meaning of each field)."""

    max_batch_candidates: int
    max_queue_delay_s: float
    max_queue_requests: int

    @property
    def merging(self) -> bool:
        return self.max_batch_candidates > 0


@dataclass(slots=True, eq=False)
class _Item:
    request_id: str
    inputs: ConvertedInputs
    staged: Staged
    """The inputs where the forward reads them (``Placement.stage``)."""
    deadline: float | None
    enqueued: float
    future: asyncio.Future[Outputs]
    loop: asyncio.AbstractEventLoop
    trace: Any = None
    """The submitter's trace context (``transport.tracing.capture``); None when tracing is off."""
    enqueued_ns: int = 0
    """``tracing.clock()`` at submit (0 when tracing is off)."""
    on_done: Callable[[], None] | None = None
    """Called on ``loop`` once the batcher no longer uses the inputs (answered or dropped)."""


def _resolve(answers: list[tuple[_Item, Outputs | BaseException]]) -> None:
    for item, value in answers:
        if item.on_done is not None:
            item.on_done()
            item.on_done = None
        future = item.future
        if future.done():
            continue
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)


class Batcher:
    """Per-version queues served by one inference thread."""

    def __init__(self, placement: Placement, policy: BatchPolicy) -> None:
        self._placement = placement
        self._policy = policy
        self._cond = threading.Condition()
        self._queues: dict[LoadedVersion, deque[_Item]] = {}
        self._queued_candidates: dict[LoadedVersion, int] = {}
        self._closed = False
        # Answers of the inference thread not yet handed to their loops (see ``_flush``).
        self._answers: list[tuple[_Item, Outputs | BaseException]] = []
        self._thread = threading.Thread(
            target=self._run, name=f"leaf-infer-{placement.device.type}", daemon=True
        )
        self._thread.start()

    # -- event loop side ----------------------------------------------------------------

    def check_capacity(self, version: LoadedVersion) -> None:
        """Raise what ``submit`` would for a full queue or a closed batcher, before the caller
        spends anything on the request (``submit`` checks again)."""
        with self._cond:
            if self._closed:
                raise ShuttingDown("leaf is shutting down")
            queue = self._queues.get(version)
            if queue is not None and len(queue) >= self._policy.max_queue_requests:
                metrics.ADMISSION_REJECTED.labels("queue_full").inc()
                raise Overloaded(
                    f"model {version.model!r}: queue full ({self._policy.max_queue_requests} requests)"
                )

    def submit(
        self,
        version: LoadedVersion,
        inputs: ConvertedInputs,
        deadline: float | None,
        request_id: str = "",
        on_done: Callable[[], None] | None = None,
    ) -> asyncio.Future[Outputs]:
        """Queue a request; the future resolves to ``{output: float32[N]}`` or a LeafError.
        ``on_done`` runs on this loop when the batcher lets go of ``inputs`` (also when the
        caller went away meanwhile); not when ``submit`` raises."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        with self._cond:
            if self._closed:
                raise ShuttingDown("leaf is shutting down")
        # Bound for an accelerator: copied now, while the device runs the batch before it.
        staged = self._placement.stage(inputs.tensors, inputs.num_candidates)
        item = _Item(
            request_id, inputs, staged, deadline, time.monotonic(), future, loop, tracing.capture(), tracing.clock(),
            on_done,
        )
        with self._cond:
            if self._closed:
                raise ShuttingDown("leaf is shutting down")
            queue = self._queues.get(version)
            if queue is None:
                queue = self._queues[version] = deque()
                self._queued_candidates[version] = 0
            if len(queue) >= self._policy.max_queue_requests:
                metrics.ADMISSION_REJECTED.labels("queue_full").inc()
                raise Overloaded(
                    f"model {version.model!r}: queue full ({self._policy.max_queue_requests} requests)"
                )
            queue.append(item)
            self._queued_candidates[version] += inputs.num_candidates
            metrics.QUEUE_DEPTH.labels(version.model).inc()
            self._cond.notify()
        return future

    def close(self) -> None:
        """Stop the inference thread; queued requests fail with UNAVAILABLE."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=60)

    # -- inference thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._flush()
            with self._cond:
                picked = self._next_batch()
            self._flush()  # requests dropped from the queue
            if picked is None:
                return
            version, items = picked
            try:
                self._execute(version, items)
            except Exception as exc:  # a bug here must not kill the only inference thread
                log.exception("batch for %s/%s failed", version.model, version.version)
                self._fail(items, exc)

    def _next_batch(self) -> tuple[LoadedVersion, list[_Item]] | None:
        """Wait (holding the condition) for a ready queue and pop its batch."""
        policy = self._policy
        while True:
            if self._closed:
                for version, queue in self._queues.items():
                    self._fail(list(queue), ShuttingDown("leaf is shutting down"))
                    metrics.QUEUE_DEPTH.labels(version.model).dec(len(queue))
                    queue.clear()
                return None
            now = time.monotonic()
            best: LoadedVersion | None = None
            best_head = float("inf")
            wake_at = float("inf")
            for version, queue in self._queues.items():
                if not queue:
                    continue
                head = queue[0].enqueued
                full = (
                    not policy.merging
                    or self._queued_candidates[version] >= policy.max_batch_candidates
                )
                ready_at = head if full else head + policy.max_queue_delay_s
                if ready_at <= now:
                    if head < best_head:
                        best, best_head = version, head
                else:
                    wake_at = min(wake_at, ready_at)
            if best is not None:
                return best, self._pop(best, now)
            self._cond.wait(None if wake_at == float("inf") else wake_at - now)

    def _pop(self, version: LoadedVersion, now: float) -> list[_Item]:
        queue = self._queues[version]
        limit = self._policy.max_batch_candidates
        items: list[_Item] = []
        rows = 0
        while queue:
            item = queue[0]
            n = item.inputs.num_candidates
            if items and (not self._policy.merging or rows + n > limit):
                break
            queue.popleft()
            self._queued_candidates[version] -= n
            metrics.QUEUE_DEPTH.labels(version.model).dec()
            if item.future.done():  # the caller went away (cancelled)
                self._answers.append((item, asyncio.CancelledError()))
                continue
            if item.deadline is not None and item.deadline <= now:
                self._fail([item], DeadlineExpired("deadline passed while queued"))
                continue
            items.append(item)
            rows += n
        if not queue:
            # Versions come and go with hot loads: do not keep empty queues of old ones.
            del self._queues[version]
            del self._queued_candidates[version]
        return items

    def _execute(self, version: LoadedVersion, items: list[_Item], rerun: bool = False) -> None:
        """Run ``items`` in one forward; ``rerun``: each again alone after their merged
        forward failed (their queue time was counted with that one)."""
        if not items:
            return
        series = version.series
        candidates = sum(item.inputs.num_candidates for item in items)
        series.batch_candidates.observe(candidates)
        series.batch_requests.observe(len(items))
        now = time.monotonic()
        if not rerun:
            for item in items:
                series.queue_stage.observe(now - item.enqueued)
        forward_started = tracing.clock()
        try:
            inputs = self._placement.gather([item.staged for item in items], version.signature.input_names)
            results = version.run(inputs, [item.inputs.num_candidates for item in items], items[0].inputs.layout)
        except Exception as exc:  # the model's, or a merge of mismatched requests
            if len(items) > 1:
                # One request can break a merged batch (a shape its batch-mates do not share,
                # values the model rejects): run each alone so only the culprit fails.
                log.warning(
                    "merged forward of %d requests for %s/%s failed (%s); running them one by one",
                    len(items), version.model, version.version, exc,
                )
                for item in items:
                    self._execute(version, [item], rerun=True)
                return
            if not isinstance(exc, ModelFailed):
                raise
            log.error("%s (request: %s)", exc, items[0].request_id, exc_info=exc.__cause__ or exc)
            self._fail(items, exc)
            return
        if forward_started:
            forward_ended = tracing.clock()
            batch = {"batch.requests": len(items), "batch.candidates": candidates}
            for item in items:
                # (a rerun's queue span runs to its own forward: the failed merged one records none)
                tracing.record("queue", item.enqueued_ns, end_ns=forward_started, parent=item.trace)
                tracing.record("forward", forward_started, batch, end_ns=forward_ended, parent=item.trace)
        for item, value in zip(items, results):
            if isinstance(value, ModelFailed):
                log.error("%s (request %s)", value, item.request_id)
            self._answers.append((item, value))

    def _fail(self, items: list[_Item], exc: BaseException) -> None:
        error = exc if isinstance(exc, LeafError) else ModelFailed("inference failed")
        self._answers += [(item, error) for item in items]

    def _flush(self) -> None:
        """Hand the answers to their loops, one wake-up per loop. Called without the lock
        (a woken loop may submit at once) and after the batch's Python work is done (a loop
        woken earlier would wait for the GIL while this thread finishes it)."""
        if not self._answers:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Item, Outputs | BaseException]]] = {}
        for item, value in self._answers:
            by_loop.setdefault(item.loop, []).append((item, value))
        self._answers = []
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, answers)
            except RuntimeError:
                pass  # the caller's loop is closed: nobody is waiting any more
