"""The root's request path: validate, union fetch, encode once, trim, fan out, merge.

``ScoreEngine.score`` runs on the server's event loop. Each model's version is resolved
first (``root.versions``). The feature fetch (cache, then one
batched store call per entity) happens on the loop; tensor encoding and per-model request
assembly (CPU-bound, LZ4 releases the GIL) run in the ``root-encode`` thread pool; all
leaf calls go out concurrently and each model gets its own result, so one failing or slow
partition affects only its models: a partition whose last health round found no serving
address fails its models UNAVAILABLE at once (``partition_down``), and every other call is
bounded by its partition's own timeout as well as by the client's deadline
(``root.partition_timeout``, applied by the leaf client). Cancelling ``score`` cancels
outstanding leaf calls.

Allowlist names that are neither in the catalog nor supplied by the client are skipped and
counted (``rootleaf_root_unknown_allowlist_features_total{model}``): the request still goes
out, and a model that truly needs the feature gets the leaf's INVALID_ARGUMENT naming it,
for that model only, instead of failing every model of the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import grpc
import numpy as np

from wire.codec import Compression, decode as decode_tensor
from wire.frames import TensorFramer
from wire.pack_writer import TensorPacker
from protos.rootleaf.v1 import tensor_pb2
from root import client_features, metrics
from transport import tracing
from transport.status import status_code
from root.assembly import (
    EncodedFeatures,
    LeafPayload,
    PackedFeatures,
    PartitionLayout,
    PartitionPayload,
    build_partition_payload,
    build_payload,
    encode_features,
    feature_union,
    pack_features,
    partition_layout,
)
from root.catalog import Entity, FeatureCatalog
from root.compression_policy import AutoCompression
from root.config import RootConfig
from root.errors import (
    DeadlineExceeded,
    InvalidRequest,
    LeafCallError,
    ModelNotFound,
    Overloaded,
    StoreUnavailable,
    shown,
)
from root.feature_store import FeatureStore, FeatureStoreError, FetchResult
from root.leaf_client import LeafClient
from root.request import ModelOutcome, ModelRef, ScoreInput, check_counts
from root.versions import Allowlists, Route, VersionResolver

log = logging.getLogger(__name__)

# Time kept back from the client's deadline when calling leaves, so the root can still
# answer with the partitions that made it (and the timed-out ones' DEADLINE_EXCEEDED):
# merging and replying take a few ms, but event-loop wake-ups jitter by tens of ms under
# load: with 10 ms the whole call sometimes missed its deadline, and with 50 ms it still did
# (1 s deadline, a slow leaf, both cores busy with other work).
DEADLINE_RESERVE_S = 0.100
DEADLINE_RESERVE_FRACTION = 0.1
# Also kept back: up to 1% of the remaining time, because the root's view of the client's
# deadline is rounded up. The grpc-timeout header keeps at most 3 significant digits and gRPC
# rounds up (a 20 s deadline arrived as 20.1 s), so with the reserve alone a leaf call that
# ran to its end answered after the client had given up on the whole call.
DEADLINE_ROUNDING_FRACTION = 0.01
# Resolutions of a model per call: the first, plus re-resolves after a leaf refused the
# version (each after a refresh of the partition's versions, within the deadline).
VERSION_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class _FetchPlan:
    """What one combination of allowlists and client features needs fetched."""

    wanted: frozenset[str]
    request_names: tuple[str, ...]
    """Request features to fetch from the store, in catalog order."""
    candidate_names: tuple[str, ...]
    """Candidate features to fetch from the store, in catalog order."""
    unknown: tuple[int, ...]
    """Per model (request order): allowlisted names neither in the catalog nor supplied."""
    request_bytes: int
    """Raw bytes of the request features fetched (one row each)."""
    candidate_row_bytes: int
    """Raw bytes of one candidate's fetched features."""


# Requests whose features total at most this many raw bytes are encoded on the event loop:
# handing the work to a root-encode thread and back (two wake-ups, the GIL passed at every
# LZ4 call) measured 0.15-0.3 ms of CPU per request, as much as encoding 100-150 KB, while
# encoding this much blocks the loop for about a millisecond.
ENCODE_ON_LOOP_BYTES = 512 * 1024

# Fetch plans kept per engine: one per distinct set of requested models and allowlist
# versions in use; the table is cleared when full (after an allowlist reload, say).
_MAX_PLANS = 256
_REQUEST_SPAN = {"entity": "request"}
_CANDIDATE_SPAN = {"entity": "candidate"}


class ScoreEngine:
    """The request path of one root."""

    def __init__(
        self,
        config: RootConfig,
        catalog: FeatureCatalog,
        store: FeatureStore,
        allowlists: Allowlists,
        leaves: Mapping[str, LeafClient],
        encode_executor: Executor | None = None,
        partition_down: Callable[[str], bool] = lambda partition: False,
    ) -> None:
        missing = set(config.partitions) - set(leaves)
        if missing:
            raise ValueError(f"no leaf client for partitions {sorted(missing)}")
        self.config = config
        self.catalog = catalog
        self.store = store
        self.allowlists = allowlists
        self.leaves = leaves
        self._executor = encode_executor
        self._partition_down = partition_down
        self._partition_of = {m: p.name for p in config.partitions.values() for m in p.models}
        self._versions = VersionResolver(allowlists, leaves, self._partition_of, trim=config.trim)
        self._all_names = tuple(catalog.names())
        self._in_flight = 0
        # Serialised tensor headers, reused across requests (used by the encode threads).
        # ``auto`` chooses per partition call (root.compression_policy); per-model calls use LZ4.
        fixed = Compression.LZ4 if config.compression == "auto" else Compression(config.compression)
        self._framer = TensorFramer(fixed)
        self._compression = fixed
        self._packers = {c: TensorPacker(c) for c in (Compression.LZ4, Compression.NONE)}
        self._auto = AutoCompression(config.link_gbps) if config.compression == "auto" else None
        self._layouts: dict[tuple[tuple[str, ...], tuple[frozenset[str] | None, ...]], PartitionLayout] = {}
        # Requested models grouped by partition, per tuple of requested names (call order
        # within a partition follows the request).
        self._groups: dict[tuple[str, ...], tuple[tuple[str, tuple[int, ...]], ...]] = {}
        self._plans: dict[tuple[tuple[frozenset[str] | None, ...], frozenset[str]], _FetchPlan] = {}

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ---- validation ----

    def _validate(self, request: ScoreInput) -> None:
        check_counts(
            self.config, models=len(request.models), candidates=len(request.candidate_ids),
            request_features=len(request.request_tensors),
        )
        seen: set[str] = set()
        for ref in request.models:
            if not ref.name:
                raise InvalidRequest("model name must not be empty")
            if ref.name in seen:
                raise InvalidRequest(f"model {shown(ref.name)} requested twice")
            seen.add(ref.name)
            if ref.name not in self._partition_of:
                raise ModelNotFound(ref.name)

    async def _client_features(self, request: ScoreInput) -> dict[str, np.ndarray]:
        """The client's request features, decoded under the budget and checked.

        Declared sizes are checked before anything is decompressed; above
        ``DECODE_ON_LOOP_BYTES`` decoding runs in the encode executor, never on the loop.
        """
        cfg = self.config
        tensors = request.request_tensors
        features = dict(request.request_features)
        if tensors:
            budget = cfg.max_request_feature_bytes
            copies = 1 if cfg.dedup_request_features else len(request.candidate_ids)
            declared = client_features.declared_bytes(
                tensors, max_count=cfg.max_request_features, max_bytes=budget, copies=copies
            )
            if declared > client_features.DECODE_ON_LOOP_BYTES:
                loop = asyncio.get_running_loop()
                decoded = await loop.run_in_executor(self._executor, client_features.decode, tensors, budget)
            else:
                decoded = client_features.decode(tensors, budget)
            for name in decoded.keys() & features.keys():
                raise InvalidRequest(f"request_features: tensor {shown(name)} given twice")
            features.update(decoded)
        client_features.check_passable(features)
        for name, array in features.items():
            spec = self.catalog.features.get(name)
            if spec is None:
                continue
            if spec.entity is not Entity.REQUEST:
                raise InvalidRequest(f"request feature {name!r} is a candidate feature in the catalog")
            if array.shape[1:] != spec.shape or array.dtype != spec.np_dtype:
                raise InvalidRequest(
                    f"request feature {name!r}: got {array.dtype}{list(array.shape[1:])}, "
                    f"catalog says {spec.dtype}{list(spec.shape)}"
                )
        return features

    # ---- what to fetch ----

    def _plan(self, allow: tuple[frozenset[str] | None, ...], client: frozenset[str]) -> "_FetchPlan":
        """The fetch plan for these allowlists (in request order) and client features.

        Requests repeat the same allowlist objects until the trimmer reloads, so plans are
        kept (keys hash cheaply: a frozenset caches its hash) in a small table that is
        cleared when full. Owned by the event loop.
        """
        key = (allow, client)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        wanted = feature_union(allow, (*self._all_names, *client))
        known = self.catalog.features.keys()
        unknown = tuple(0 if features is None else len(features - known - client) for features in allow)
        request_names: list[str] = []
        candidate_names: list[str] = []
        for name in self._all_names:
            if name in wanted and name not in client:
                spec = self.catalog.features[name]
                (request_names if spec.entity is Entity.REQUEST else candidate_names).append(name)
        features = self.catalog.features
        plan = _FetchPlan(
            wanted, tuple(request_names), tuple(candidate_names), unknown,
            sum(features[n].row_bytes for n in request_names), sum(features[n].row_bytes for n in candidate_names),
        )
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    # ---- fetch ----

    async def _fetch(self, entity: Entity, ids: np.ndarray, names: Sequence[str]) -> FetchResult:
        if not names:
            return FetchResult({}, 0)
        store_cfg = self.config.feature_store
        try:
            if store_cfg.fetch_timeout_ms:
                result = await asyncio.wait_for(
                    self.store.fetch(entity, ids, names), store_cfg.fetch_timeout_ms / 1000.0
                )
            else:
                result = await self.store.fetch(entity, ids, names)
        except (FeatureStoreError, TimeoutError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else "error"
            detail = f"no answer within fetch_timeout_ms={store_cfg.fetch_timeout_ms}" if reason == "timeout" else str(exc)
            if store_cfg.on_error != "defaults":
                raise StoreUnavailable(f"feature store: {detail}") from None
            log.warning("feature store %s for %d %s ids, serving defaults: %s", reason, len(ids), entity.value, detail)
            metrics.FEATURE_STORE_DEGRADED.labels(entity.value, reason).inc()
            return self._defaults(ids, names)
        if result.missing:
            metrics.FEATURE_DEFAULTS.labels(entity.value).inc(result.missing)
        return result

    def _defaults(self, ids: np.ndarray, names: Sequence[str]) -> FetchResult:
        """Every feature's catalog default for ``ids`` (the ``on_error = "defaults"`` policy)."""
        columns = {}
        for name in names:
            spec = self.catalog[name]
            columns[name] = np.full((len(ids), *spec.shape), spec.default, dtype=spec.np_dtype)
        return FetchResult(columns, len(ids))

    # ---- the request ----

    async def score(self, request: ScoreInput, timeout_s: float | None = None) -> list[ModelOutcome]:
        """Score ``request``; ``timeout_s`` None = the configured default deadline."""
        if self._in_flight >= self.config.max_in_flight:
            raise Overloaded(f"{self._in_flight} calls in flight (max_in_flight={self.config.max_in_flight})")
        self._in_flight += 1
        try:
            return await self._score(request, timeout_s)
        finally:
            self._in_flight -= 1

    # ---- the request ----

    async def _score(self, request: ScoreInput, timeout_s: float | None) -> list[ModelOutcome]:
        loop = asyncio.get_running_loop()
        timeout = self.config.default_deadline_ms / 1000.0 if timeout_s is None else timeout_s
        deadline = loop.time() + timeout
        started = tracing.clock()
        self._validate(request)
        client = await self._client_features(request)
        tracing.record("validate", started)
        unknown = {
            self._partition_of[ref.name]
            for ref in request.models
            if self.leaves[self._partition_of[ref.name]].served_versions(ref.name) is None
        }
        if unknown:
            await self._versions.refresh(unknown, deadline)
        outcomes: dict[str, ModelOutcome] = {}
        pending = list(request.models)
        # A leaf that lacks the version it was sent (it unloaded it since the last refresh)
        # answers FAILED_PRECONDITION: refresh that partition's versions and re-resolve. The
        # same holds when the root believes no leaf serves what is asked (its view may be
        # stale: another request just struck the version off). Replicas swapping versions
        # one after the other can refuse twice in a row, hence more than one re-resolve.
        for attempt in range(VERSION_ATTEMPTS):
            last = attempt == VERSION_ATTEMPTS - 1
            routes: list[Route] = []
            retry: list[ModelRef] = []
            started = tracing.clock()
            for ref in pending:
                resolved = self._versions.resolve(ref)
                if isinstance(resolved, Route):
                    routes.append(resolved)
                elif not last:
                    retry.append(ref)
                else:
                    outcomes[ref.name] = resolved
            tracing.record("resolve", started, {"attempt": attempt, "models": len(routes)})
            results = await self._run(request, routes, client, deadline) if routes else []
            started = tracing.clock()
            pending = retry
            for route, outcome in zip(routes, results):
                if not last and outcome.error_code == grpc.StatusCode.FAILED_PRECONDITION and route.version:
                    pending.append(route.ref)
                else:
                    outcomes[route.ref.name] = outcome
            tracing.record("merge", started)
            if not pending:
                break
            await self._versions.refresh({self._partition_of[ref.name] for ref in pending}, deadline)
        return [outcomes[ref.name] for ref in request.models]

    async def _run(
        self, request: ScoreInput, routes: list[Route], client: dict[str, np.ndarray], deadline: float
    ) -> list[ModelOutcome]:
        """Fetch the union of the routes' features, encode once, call every leaf."""
        loop = asyncio.get_running_loop()
        allow = [route.features for route in routes]
        plan = self._plan(tuple(allow), frozenset(client))
        for route, unknown in zip(routes, plan.unknown):
            if unknown:
                metrics.UNKNOWN_ALLOWLIST_FEATURES.labels(route.ref.name).inc(unknown)
        wanted, request_names, candidate_names = plan.wanted, plan.request_names, plan.candidate_names
        ids = np.asarray(request.candidate_ids, dtype=np.uint64)
        user = np.array([request.user_id], dtype=np.uint64)
        fetch_started = time.perf_counter()
        try:
            user_cols, item_cols = await asyncio.wait_for(
                asyncio.gather(
                    tracing.traced(self._fetch(Entity.REQUEST, user, request_names), "fetch", _REQUEST_SPAN),
                    tracing.traced(self._fetch(Entity.CANDIDATE, ids, candidate_names), "fetch", _CANDIDATE_SPAN),
                ),
                timeout=max(deadline - loop.time(), 0.0),
            )
        except TimeoutError:
            raise DeadlineExceeded("deadline exceeded while fetching features") from None
        fetch_s = time.perf_counter() - fetch_started
        for route in routes:
            metrics.child(metrics.MODEL_STAGE_SECONDS, route.ref.name, route.label, "fetch").observe(fetch_s)
        sent_client = {name: array for name, array in client.items() if name in wanted}
        request_cols = dict(user_cols.columns)
        request_cols.update(sent_client)
        candidate_cols = dict(item_cols.columns)
        n = len(request.candidate_ids)
        client_bytes = sum(array.nbytes for array in sent_client.values())
        raw_bytes = plan.candidate_row_bytes * n + (plan.request_bytes + client_bytes) * (
            1 if self.config.dedup_request_features else n
        )
        on_loop = raw_bytes <= ENCODE_ON_LOOP_BYTES
        started = tracing.clock()
        if self.config.partition_calls:
            args = (request, request_cols, candidate_cols, routes)
            if on_loop:
                parts = self._prepare_partitions(*args)
            else:
                parts = await loop.run_in_executor(self._executor, self._prepare_partitions, *args)
            tracing.record("pack", started, {"partitions": len(parts), "raw_bytes": raw_bytes})
            leaf_timeout = self._leaf_timeout(deadline - loop.time())
            outcomes: list[ModelOutcome | None] = [None] * len(routes)
            for (_, positions), results in zip(
                parts, await asyncio.gather(
                    *(tracing.traced(self._call_partition(p, leaf_timeout), "partition", {"partition": p.partition})
                      for p, _ in parts)
                )
            ):
                for position, outcome in zip(positions, results):
                    outcomes[position] = outcome
            return [o for o in outcomes if o is not None]
        if on_loop:
            payloads = self._prepare(request, request_cols, candidate_cols, routes)
        else:
            payloads = await loop.run_in_executor(
                self._executor, self._prepare, request, request_cols, candidate_cols, routes
            )
        tracing.record("pack", started, {"models": len(payloads), "raw_bytes": raw_bytes})
        leaf_timeout = self._leaf_timeout(deadline - loop.time())
        return list(
            await asyncio.gather(
                *(tracing.traced(self._call(p, leaf_timeout), "leaf call", {"model": p.model}) for p in payloads)
            )
        )

    @staticmethod
    def _leaf_timeout(remaining: float) -> float:
        reserve = min(DEADLINE_RESERVE_S, remaining * DEADLINE_RESERVE_FRACTION)
        leaf_timeout = remaining - reserve - remaining * DEADLINE_ROUNDING_FRACTION
        if leaf_timeout <= 0:
            raise DeadlineExceeded("deadline exceeded before the leaf calls")
        return leaf_timeout

    def _partition_groups(self, routes: Sequence[Route]) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """(partition, positions of its routes) in first-seen order."""
        key = tuple(route.ref.name for route in routes)
        groups = self._groups.get(key)
        if groups is None:
            found: dict[str, list[int]] = {}
            for position, route in enumerate(routes):
                found.setdefault(route.partition, []).append(position)
            groups = tuple((p, tuple(positions)) for p, positions in found.items())
            if len(self._groups) >= _MAX_PLANS:
                self._groups.clear()
            self._groups[key] = groups
        return groups

    def _prepare_partitions(
        self,
        request: ScoreInput,
        request_cols: dict[str, np.ndarray],
        candidate_cols: dict[str, np.ndarray],
        routes: list[Route],
    ) -> list[tuple[PartitionPayload, tuple[int, ...]]]:
        """One payload per partition (encode thread), with the positions of its routes."""
        groups = self._partition_groups(routes)
        auto = self._auto
        choices = {p: auto.choose(p) for p, _ in groups} if auto is not None else {}
        wanted = {c for c, _ in choices.values()} or {self._compression}
        if any(sample for _, sample in choices.values()):
            wanted = {Compression.LZ4, Compression.NONE}
        packs: dict[Compression, PackedFeatures] = {}
        pack_cpu: dict[Compression, float] = {}
        for compression in wanted:
            started = time.thread_time()
            packs[compression] = pack_features(
                request_cols, candidate_cols, len(request.candidate_ids),
                dedup_request_features=self.config.dedup_request_features, packer=self._packers[compression],
            )
            pack_cpu[compression] = time.thread_time() - started
        out = []
        for partition, positions in groups:
            compression, sample = choices.get(partition, (self._compression, False))
            payload = self._partition_payload(packs[compression], request, partition, positions, routes)
            if sample and auto is not None:
                other = Compression.NONE if compression is Compression.LZ4 else Compression.LZ4
                second = self._partition_payload(packs[other], request, partition, positions, routes)
                raw, lz4 = (payload, second) if compression is Compression.NONE else (second, payload)
                # LZ4's extra CPU over the whole pack, this partition's share of its raw bytes.
                share = raw.trimmed_bytes / max(packs[Compression.NONE].raw_size, 1)
                extra = (pack_cpu[Compression.LZ4] - pack_cpu[Compression.NONE]) * share
                auto.observe(partition, raw.wire_bytes, lz4.wire_bytes, extra)
            metrics.child(metrics.PARTITION_BYTES, partition, "untrimmed").inc(payload.untrimmed_bytes)
            metrics.child(metrics.PARTITION_BYTES, partition, "trimmed").inc(payload.trimmed_bytes)
            metrics.child(metrics.PARTITION_BYTES, partition, "wire").inc(payload.wire_bytes)
            out.append((payload, positions))
        if auto is not None:
            auto.request_done()
        return out

    def _partition_payload(
        self, packed: PackedFeatures, request: ScoreInput, partition: str, positions: tuple[int, ...],
        routes: list[Route],
    ) -> PartitionPayload:
        part_allow = tuple(routes[i].features for i in positions)
        key = (packed.names, part_allow)
        layout = self._layouts.get(key)
        if layout is None:
            layout = partition_layout(packed.names, part_allow)
            if len(self._layouts) >= _MAX_PLANS:
                self._layouts.clear()
            self._layouts[key] = layout
        models = [(routes[i].ref.name, routes[i].version) for i in positions]
        return build_partition_payload(packed, layout, request_id=request.request_id, partition=partition, models=models)

    async def _call_partition(self, payload: PartitionPayload, timeout_s: float) -> list[ModelOutcome]:
        """One outcome per model of the call, in its order; a failed call fails all of them."""
        partition = payload.partition
        called = time.perf_counter()
        try:
            self._check_serving(partition)
            response = await self.leaves[partition].score_partition(
                payload.payload, timeout_s, [(ref.name, ref.version) for ref in payload.models]
            )
            if len(response.models) != len(payload.models):
                raise LeafCallError(
                    grpc.StatusCode.INTERNAL,
                    f"leaf answered {len(response.models)} models for {len(payload.models)} asked",
                )
        except LeafCallError as exc:
            metrics.LEAF_ERRORS.labels(partition, exc.code.name).inc()
            out = []
            for ref in payload.models:
                metrics.child(metrics.MODEL_RESULTS, ref.name, exc.code.name).inc()
                out.append(ModelOutcome(ref.name, ref.version, (), exc.code, f"partition {partition!r}: {exc.message}"))
            return out
        out = []
        elapsed = time.perf_counter() - called
        for ref, reply in zip(payload.models, response.models):
            if reply.error_code:
                code = status_code(reply.error_code)
                metrics.LEAF_ERRORS.labels(partition, code.name).inc()
                metrics.child(metrics.MODEL_RESULTS, ref.name, code.name).inc()
                out.append(ModelOutcome(ref.name, ref.version, (), code, f"partition {partition!r}: {reply.error_message}"))
                continue
            metrics.child(metrics.MODEL_RESULTS, ref.name, "OK").inc()
            metrics.child(metrics.MODEL_STAGE_SECONDS, ref.name, reply.version, "leaf").observe(elapsed)
            if reply.outputs:
                _observe_scores(ref.name, reply.outputs[0])
            out.append(ModelOutcome(ref.name, reply.version, tuple(reply.outputs)))
        return out

    def _check_serving(self, partition: str) -> None:
        """Fail a partition at once while its last health round found no serving address:
        a hung leaf would hold the call for its whole timeout, and a dead one refuses it."""
        if self._partition_down(partition):
            raise LeafCallError(grpc.StatusCode.UNAVAILABLE, "no leaf address serving at the last health check")

    def _prepare(
        self,
        request: ScoreInput,
        request_cols: dict[str, np.ndarray],
        candidate_cols: dict[str, np.ndarray],
        routes: list[Route],
    ) -> list[LeafPayload]:
        encoded: EncodedFeatures = encode_features(
            request_cols,
            candidate_cols,
            len(request.candidate_ids),
            compression=self._compression,
            dedup_request_features=self.config.dedup_request_features,
            framer=self._framer,
        )
        payloads = []
        for route in routes:
            payload = build_payload(
                encoded,
                request_id=request.request_id,
                model=route.ref.name,
                version=route.version,
                features=route.features,
            )
            partition = route.partition
            metrics.child(metrics.PARTITION_BYTES, partition, "untrimmed").inc(payload.untrimmed_bytes)
            metrics.child(metrics.PARTITION_BYTES, partition, "trimmed").inc(payload.trimmed_bytes)
            metrics.child(metrics.PARTITION_BYTES, partition, "wire").inc(payload.wire_bytes)
            payloads.append(payload)
        return payloads

    async def _call(self, payload: LeafPayload, timeout_s: float) -> ModelOutcome:
        partition = self._partition_of[payload.model]
        called = time.perf_counter()
        try:
            self._check_serving(partition)
            response = await self.leaves[partition].score(
                payload.payload, timeout_s, payload.model, payload.version or ""
            )
        except LeafCallError as exc:
            metrics.LEAF_ERRORS.labels(partition, exc.code.name).inc()
            metrics.child(metrics.MODEL_RESULTS, payload.model, exc.code.name).inc()
            return ModelOutcome(
                payload.model, payload.version or "", (), exc.code, f"partition {partition!r}: {exc.message}"
            )
        metrics.child(metrics.MODEL_RESULTS, payload.model, "OK").inc()
        metrics.child(metrics.MODEL_STAGE_SECONDS, payload.model, response.version, "leaf").observe(
            time.perf_counter() - called
        )
        if response.outputs:
            _observe_scores(payload.model, response.outputs[0])
        return ModelOutcome(payload.model, response.version, tuple(response.outputs))


def _observe_scores(model: str, tensor: tensor_pb2.Tensor) -> None:
    try:
        values = decode_tensor(tensor).reshape(-1)
    except ValueError:
        return
    if values.dtype.kind != "f" or not len(values):
        return
    step = max(1, len(values) // metrics.SCORE_SAMPLES)
    metrics.observe_all(metrics.child(metrics.MODEL_SCORE, model), values[::step][: metrics.SCORE_SAMPLES])

