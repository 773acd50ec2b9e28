"""Root service tests: an in-process root in front of real in-process leaves (loopback gRPC).

One event loop runs in a background thread for the module so the leaves and the root are
built once; each test submits coroutines to it. Leaves are real ``leaf.server`` servers
with demo models exported into a temporary repository; what each leaf receives is seen
through its request observer.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from leaf.config import LeafConfig
from harness.demo_model import build_demo_model
from leaf import torchscript
from leaf.export import export_model
from harness.leaf_hooks import DelayInterceptor, ObservedRequest, RecordingInterceptor
from leaf.server import create_server as create_leaf_server
from wire.codec import DType, Encoding, encode
from protos.rootleaf.v1 import root_pb2, root_pb2_grpc, tensor_pb2
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.client import AsyncRootClient
from root.config import CacheConfig, FeatureStoreConfig, PartitionConfig, RootConfig
from harness.datagen import generate_local_store
from root.local_store import LocalFeatureStore
from root.server import RootServer
from root.server import create_server as create_root_server
from tests.waiting import eventually, eventually_async

T = TypeVar("T")
USERS, ITEMS, SEED = 40, 300, 11
WAIT_S = 20.0


def make_catalog() -> FeatureCatalog:
    R, C = Entity.REQUEST, Entity.CANDIDATE
    specs = [
        FeatureSpec("u_s0", R, "float32", (), kind="scalar"),
        FeatureSpec("u_s1", R, "float32", (), kind="ratio"),
        FeatureSpec("u_s2", R, "float32", (), kind="counter"),
        FeatureSpec("u_s3", R, "float32", (), kind="scalar"),
        FeatureSpec("u_emb", R, "float32", (8,), kind="embedding"),
        FeatureSpec("u_hist", R, "int64", (6,), kind="ids"),
        *(FeatureSpec(f"c_r{i}", C, "float32", (), kind="ratio", zero_fraction=0.5) for i in range(10)),
        *(FeatureSpec(f"c_cnt{i}", C, "float32", (), kind="counter") for i in range(4)),
        FeatureSpec("c_f16", C, "float16", (3,), kind="embedding"),
        FeatureSpec("c_ids", C, "int32", (4,), kind="ids", zero_fraction=0.2),
        FeatureSpec("c_emb", C, "float32", (8,), kind="embedding"),
    ]
    return FeatureCatalog.of(specs)


# model -> (partition, inputs); None inputs = every catalog feature (and no allowlist).
MODELS: dict[str, tuple[str, list[str] | None]] = {
    "m_a": ("pa", ["u_s0", "u_emb", "c_r0", "c_r1", "c_r2", "c_r3", "c_ids"]),
    "m_b": ("pa", ["u_s1", "u_hist", "c_r2", "c_r3", "c_r4", "c_r5", "c_cnt0", "c_f16"]),
    "m_c": ("pb", ["u_s0", "u_s2", "c_emb", "c_cnt1", "c_r8"]),
    "m_full": ("pb", None),
    "m_slow": ("ps", ["u_s3", "c_r9"]),
}


class LoopThread:
    """An event loop in a named background thread; ``run`` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-root-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = WAIT_S) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def close(self) -> None:
        async def _drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        self.run(_drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT_S)
        self.loop.close()


@dataclass
class Observed:
    """Requests the leaves saw (appended on the loop thread)."""

    requests: list[ObservedRequest] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, req: ObservedRequest) -> None:
        with self.cond:
            self.requests.append(req)
            self.cond.notify_all()

    def for_request(self, request_id: str) -> dict[str, ObservedRequest]:
        with self.cond:
            return {r.model: r for r in self.requests if r.request_id == request_id}


@dataclass
class Cluster:
    loop: LoopThread
    tmp: Path
    catalog: FeatureCatalog
    store_dir: Path
    bundle: Path
    repos: dict[str, Path]
    observed: Observed
    leaves: dict[str, tuple[Any, int]] = field(default_factory=dict)
    roots: list[RootServer] = field(default_factory=list)

    def inputs(self, model: str) -> list[str]:
        names = MODELS[model][1]
        return list(self.catalog.features) if names is None else names

    def base_config(self, **overrides: Any) -> RootConfig:
        partitions: dict[str, PartitionConfig] = {
            p: PartitionConfig(p, (f"127.0.0.1:{self.leaves[p][1]}",), tuple(m for m, (pp, _) in MODELS.items() if pp == p))
            for p in ("pa", "pb", "ps")
            if p in self.leaves
        }
        config = RootConfig(
            catalog=self.tmp / "catalog.json",
            partitions=partitions,
            feature_store=FeatureStoreConfig(kind="local", path=self.store_dir),
            bundles={"ads": self.bundle},
            cache=CacheConfig(max_bytes=8 * 1024 * 1024, ttl_s=60.0),
            max_candidates=300,
        )
        return replace(config, **overrides)

    async def start_root(self, config: RootConfig) -> tuple[RootServer, int]:
        server, port = create_root_server(config)
        await server.start()
        self.roots.append(server)
        await wait_serving(f"127.0.0.1:{port}")
        return server, port

    def expected_scores(self, model: str, user: int, cands: np.ndarray, overrides: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The model run directly on untrimmed inputs read from the store's files."""
        store = LocalFeatureStore(self.store_dir, self.catalog)
        feats: dict[str, torch.Tensor] = {}
        for name in self.inputs(model):
            spec = self.catalog[name]
            if overrides and name in overrides:
                value = np.broadcast_to(overrides[name], (len(cands), *spec.shape))
            elif spec.entity is Entity.REQUEST:
                value = np.broadcast_to(store.fetch_sync(Entity.REQUEST, np.array([user], np.uint64), [name]).columns[name], (len(cands), *spec.shape))
            else:
                value = store.fetch_sync(Entity.CANDIDATE, cands, [name]).columns[name]
            feats[name] = torch.from_numpy(np.ascontiguousarray(value))
        module = torchscript.load(str(self.repos[MODELS[model][0]] / model / "1" / "model.pt"), torch.device("cpu"))
        with torch.inference_mode():
            out = module(feats)
        return out.numpy()[:, 0]


async def wait_serving(target: str, timeout: float = WAIT_S) -> None:
    """Wait for the server's health Watch stream to report SERVING."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def watch() -> None:
            async for reply in stub.Watch(health_pb2.HealthCheckRequest(service="rootleaf.v1.Root")):
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return

        await asyncio.wait_for(watch(), timeout)


def write_bundle(path: Path, allowlists: dict[str, list[str]]) -> None:
    doc = {m: [{"version": "1", "input_names": names, "output_names": ["score"]}] for m, names in allowlists.items()}
    tmp = path.with_name(".tmp.json")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def build_cluster(tmp: Path, loop: LoopThread, *, slow_delay_ms: float = 0.0) -> Cluster:
    catalog = make_catalog()
    catalog.save(tmp / "catalog.json")
    store_dir = tmp / "store"
    generate_local_store(catalog, store_dir, USERS, ITEMS, SEED)
    repos = {p: tmp / f"repo_{p}" for p in ("pa", "pb", "ps")}
    for i, (model, (part, names)) in enumerate(MODELS.items()):
        inputs = list(catalog.features) if names is None else names
        widths = {n: max(1, math.prod(catalog[n].shape)) for n in inputs}
        export_model(build_demo_model(widths, [16], ["score"], seed=i), repos[part] / model / "1", inputs, ["score"])
    bundle = tmp / "bundles" / "ads" / "module_info.json"
    bundle.parent.mkdir(parents=True)
    write_bundle(bundle, {m: names for m, (_, names) in MODELS.items() if names is not None})
    cluster = Cluster(loop, tmp, catalog, store_dir, bundle, repos, Observed())
    for part in ("pa", "pb", "ps"):
        delay = slow_delay_ms if part == "ps" else 0.0
        cluster.leaves[part] = loop.run(start_leaf(repos[part], cluster.observed, delay))
    return cluster


async def start_leaf(repo: Path, observer: Callable[[ObservedRequest], None], delay_ms: float = 0.0) -> tuple[Any, int]:
    interceptors: list[grpc.aio.ServerInterceptor] = [RecordingInterceptor([observer])]
    if delay_ms:
        interceptors.append(DelayInterceptor(delay_ms / 1000.0))
    server, port = create_leaf_server(
        LeafConfig(repo=repo, port=0, torch_threads=1, grace_s=0.0), interceptors=interceptors
    )
    await server.start()
    return server, port


def close_cluster(cluster: Cluster) -> None:
    async def _stop() -> None:
        for root in cluster.roots:
            await root.stop(0)
        for server, _ in cluster.leaves.values():
            await server.stop(0)

    cluster.loop.run(_stop())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    loop = LoopThread()
    c = build_cluster(tmp_path_factory.mktemp("root_service"), loop, slow_delay_ms=3000.0)
    try:
        yield c
    finally:
        close_cluster(c)
        loop.close()


@pytest.fixture(scope="module")
def root_target(cluster: Cluster) -> str:
    _, port = cluster.loop.run(cluster.start_root(cluster.base_config()))
    return f"127.0.0.1:{port}"


def score(cluster: Cluster, target: str, *args: Any, **kwargs: Any) -> Any:
    async def _go() -> Any:
        async with AsyncRootClient(target) as client:
            return await client.score(*args, **kwargs)

    return cluster.loop.run(_go())


FAST = ["m_a", "m_b", "m_c", "m_full"]


def test_scores_equal_untrimmed_model_and_leaves_get_only_allowlisted(cluster: Cluster, root_target: str) -> None:
    cands = np.array([5, 17, 0, 299, 42, 17], dtype=np.uint64)
    results = score(cluster, root_target, 3, cands, FAST, request_id="r-equal")
    assert set(results) == set(FAST)
    seen = cluster.observed.for_request("r-equal")
    for model in FAST:
        res = results[model]
        assert res.ok, (model, res.error_code, res.error_message)
        assert res.version == "1"
        np.testing.assert_allclose(res.outputs["score"], cluster.expected_scores(model, 3, cands), rtol=1e-6, atol=1e-7)
        assert set(seen[model].feature_names) == set(cluster.inputs(model))
        assert seen[model].num_candidates == len(cands)
    # m_full has no allowlist: it got every catalog feature.
    assert set(seen["m_full"].feature_names) == set(cluster.catalog.features)


def test_missing_ids_get_defaults_and_are_counted(cluster: Cluster, root_target: str) -> None:
    before = metric("rootleaf_root_feature_defaults_total", {"entity": "candidate"})
    cands = np.array([1, ITEMS + 5, 2**40], dtype=np.uint64)
    results = score(cluster, root_target, USERS + 100, cands, ["m_c"], request_id="r-missing")
    assert results["m_c"].ok
    np.testing.assert_allclose(
        results["m_c"].outputs["score"], cluster.expected_scores("m_c", USERS + 100, cands), rtol=1e-6, atol=1e-7
    )
    assert metric("rootleaf_root_feature_defaults_total", {"entity": "candidate"}) >= before + 2


def test_client_request_features_override_store(cluster: Cluster, root_target: str) -> None:
    cands = np.arange(10, dtype=np.uint64)
    override = {"u_s0": np.array([7.5], dtype=np.float32)}
    results = score(cluster, root_target, 4, cands, ["m_a", "m_c"], request_features=override, request_id="r-override")
    for model in ("m_a", "m_c"):
        np.testing.assert_allclose(
            results[model].outputs["score"], cluster.expected_scores(model, 4, cands, override), rtol=1e-6, atol=1e-7
        )


@pytest.mark.parametrize(
    "switches",
    [dict(trim=False), dict(compression="none"), dict(dedup_request_features=False),
     dict(trim=False, compression="none", dedup_request_features=False, partition_calls=False),
     dict(partition_calls=False)],
    ids=["no-trim", "no-lz4", "no-dedup", "baseline", "per-model-calls"],
)
def test_switches_never_change_scores_and_have_their_effect(cluster: Cluster, root_target: str, switches: dict[str, Any]) -> None:
    cands = np.arange(0, 200, 3, dtype=np.uint64)
    reference = score(cluster, root_target, 9, cands, FAST, request_id="r-ref-" + "-".join(switches))
    _, port = cluster.loop.run(cluster.start_root(cluster.base_config(**switches)))
    rid = "r-switch-" + "-".join(f"{k}{v}" for k, v in switches.items())
    results = score(cluster, f"127.0.0.1:{port}", 9, cands, FAST, request_id=rid)
    seen = cluster.observed.for_request(rid)
    ref_seen = cluster.observed.for_request("r-ref-" + "-".join(switches))
    for model in FAST:
        assert results[model].ok
        np.testing.assert_array_equal(results[model].outputs["score"], reference[model].outputs["score"])
        if not switches.get("trim", True):
            assert set(seen[model].feature_names) == set(cluster.catalog.features)
        else:
            assert set(seen[model].feature_names) == set(cluster.inputs(model))
    if switches.get("compression") == "none" and switches.get("trim", True):
        assert seen["m_full"].wire_bytes > ref_seen["m_full"].wire_bytes
    if switches.get("dedup_request_features") is False and switches.get("trim", True):
        assert seen["m_a"].wire_bytes > ref_seen["m_a"].wire_bytes


def test_partition_bytes_metrics(cluster: Cluster, root_target: str) -> None:
    stages = ("untrimmed", "trimmed", "wire")
    before = {s: metric("rootleaf_root_partition_bytes_total", {"partition": "pa", "stage": s}) for s in stages}
    score(cluster, root_target, 1, np.arange(100, dtype=np.uint64), ["m_a", "m_b"], request_id="r-bytes")
    delta = {s: metric("rootleaf_root_partition_bytes_total", {"partition": "pa", "stage": s}) - before[s] for s in stages}
    seen = cluster.observed.for_request("r-bytes")
    # one partition call carries both models (each sees the call's size)
    assert delta["wire"] == seen["m_a"].wire_bytes == seen["m_b"].wire_bytes
    # both models' features are all that was fetched, and the call carries each once
    assert 0 < delta["trimmed"] == delta["untrimmed"]
    assert set(seen["m_a"].feature_names) | set(seen["m_b"].feature_names) == set(cluster.inputs("m_a")) | set(
        cluster.inputs("m_b")
    )


def test_allowlist_change_on_disk_applies_without_restart(cluster: Cluster, root_target: str) -> None:
    root = cluster.roots[0]
    allow = {m: names for m, (_, names) in MODELS.items() if names is not None}
    grown = allow | {"m_a": allow["m_a"] + ["c_cnt3", "u_s3"]}
    write_bundle(cluster.bundle, grown)
    try:
        assert root.trimmer.wait_until(lambda: root.trimmer.lookup("m_a").features == frozenset(grown["m_a"]), 5.0)
        cands = np.arange(20, dtype=np.uint64)
        results = score(cluster, root_target, 2, cands, ["m_a"], request_id="r-reload")
        assert results["m_a"].ok
        assert set(cluster.observed.for_request("r-reload")["m_a"].feature_names) == set(grown["m_a"])
        np.testing.assert_allclose(results["m_a"].outputs["score"], cluster.expected_scores("m_a", 2, cands), rtol=1e-6, atol=1e-7)
    finally:
        write_bundle(cluster.bundle, allow)
        assert root.trimmer.wait_until(lambda: root.trimmer.lookup("m_a").features == frozenset(allow["m_a"]), 5.0)


def test_slow_leaf_hits_deadline_for_its_models_only(cluster: Cluster, root_target: str) -> None:
    results = score(cluster, root_target, 1, np.arange(8, dtype=np.uint64), ["m_a", "m_slow"], timeout_s=2.0)
    assert results["m_a"].ok
    assert results["m_slow"].error_code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "ps" in results["m_slow"].error_message


async def _score_raw(target: str, request: root_pb2.ScoreRequest) -> root_pb2.ScoreResponse:
    """Send a hand-built ``ScoreRequest`` through the generated stub."""
    async with grpc.aio.insecure_channel(target) as channel:
        response: root_pb2.ScoreResponse = await root_pb2_grpc.RootStub(channel).Score(request, timeout=5.0)
        return response


def _call_raw(cluster: Cluster, target: str, request: root_pb2.ScoreRequest) -> grpc.aio.AioRpcError:
    async def _go() -> grpc.aio.AioRpcError:
        try:
            await _score_raw(target, request)
        except grpc.aio.AioRpcError as exc:
            return exc
        raise AssertionError("call succeeded")

    return cluster.loop.run(_go())


def _request(models: list[str], cands: list[int], features: list[Any] | None = None) -> root_pb2.ScoreRequest:
    req = root_pb2.ScoreRequest(user_id=1, candidate_ids=cands)
    for m in models:
        req.models.add(name=m)
    req.request_features.extend(features or [])
    return req


def _lz4_zeros(name: str, shape: tuple[int, ...]) -> Any:
    """A small LZ4 tensor that decodes to ``shape`` float32 zeros (a decompression bomb)."""
    return encode(name, np.zeros(shape, np.float32), "lz4_always")


def _declared(name: str, shape: tuple[int, ...]) -> Any:
    """A float32 tensor header declaring ``shape``, with 1 KiB of payload."""
    return tensor_pb2.Tensor(
        name=name, dtype=DType.FLOAT32, shape=shape, raw_size=4 * math.prod(shape), encoding=Encoding.LZ4, data=bytes(1024)
    )


def _corrupt_tensor() -> Any:
    t = encode("u_s0", np.array([1.0], dtype=np.float32), "none")
    t.raw_size = 8
    return t


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (_request([], [1, 2]), grpc.StatusCode.INVALID_ARGUMENT, "models"),
        (_request(["m_a"], []), grpc.StatusCode.INVALID_ARGUMENT, "candidate"),
        (_request(["m_a"], list(range(301))), grpc.StatusCode.INVALID_ARGUMENT, "max_candidates"),
        (_request(["m_a", "nope_model"], [1]), grpc.StatusCode.NOT_FOUND, "nope_model"),
        (_request(["m_a", "m_a"], [1]), grpc.StatusCode.INVALID_ARGUMENT, "twice"),
        (_request(["m_a"], [1], [_corrupt_tensor()]), grpc.StatusCode.INVALID_ARGUMENT, "u_s0"),
        (_request(["m_a"], [1], [encode("u_s0", np.zeros((2,), np.float32))]), grpc.StatusCode.INVALID_ARGUMENT, "leading dim"),
        (_request(["m_a"], [1], [encode("u_s0", np.zeros((1, 3), np.float32))]), grpc.StatusCode.INVALID_ARGUMENT, "catalog"),
        (_request(["m_a"], [1], [encode("c_r0", np.zeros((1,), np.float32))]), grpc.StatusCode.INVALID_ARGUMENT, "candidate"),
        # A dtype the root cannot re-encode for the leaves is the client's error, not INTERNAL.
        (_request(["m_full"], [1], [encode("x_bf", np.zeros((1, 2), np.uint16), dtype=DType.BFLOAT16)]),
         grpc.StatusCode.INVALID_ARGUMENT, "x_bf"),
        # Models and candidates are checked before any client tensor is decompressed.
        (_request([], [1], [_declared("x_bomb", (1, 80 * 1024 * 1024))]), grpc.StatusCode.INVALID_ARGUMENT, "models"),
        (_request(["nope_model"], [1], [_declared("x_bomb", (1, 80 * 1024 * 1024))]), grpc.StatusCode.NOT_FOUND, "nope_model"),
        # The per-request budget on declared sizes: bytes (one big tensor, or many) and count.
        (_request(["m_a"], [1], [_lz4_zeros("x_big", (1, 2 * 1024 * 1024))]), grpc.StatusCode.INVALID_ARGUMENT, "max_request_feature_bytes"),
        (_request(["m_a"], [1], [_lz4_zeros(f"x{i}", (1, 300 * 1024)) for i in range(4)]),
         grpc.StatusCode.INVALID_ARGUMENT, "max_request_feature_bytes"),
        (_request(["m_a"], [1], [encode(f"x{i}", np.ones((1,), np.float32)) for i in range(1025)]),
         grpc.StatusCode.INVALID_ARGUMENT, "max_request_features"),
    ],
    ids=["no-models", "no-candidates", "too-many-candidates", "unknown-model", "duplicate-model", "corrupt-tensor",
         "bad-leading-dim", "bad-shape", "candidate-feature", "bfloat16-feature", "bomb-without-models",
         "bomb-unknown-model", "over-byte-budget", "over-byte-budget-total", "over-count-budget"],
)
def test_bad_requests_get_their_codes(
    cluster: Cluster, root_target: str, request_: root_pb2.ScoreRequest, code: grpc.StatusCode, fragment: str
) -> None:
    before = metric("rootleaf_root_requests_total", {"code": code.name})
    err = _call_raw(cluster, root_target, request_)
    assert err.code() is code
    assert fragment in (err.details() or "")
    # The root counts the call after the status has gone out: poll (bounded) for the count.
    eventually(lambda: metric("rootleaf_root_requests_total", {"code": code.name}) > before, f"a {code.name} call counted")
    assert metric("rootleaf_root_requests_total", {"code": code.name}) == before + 1


def test_status_reports_bundles_partitions_settings(cluster: Cluster, root_target: str) -> None:
    async def _go() -> root_pb2.RootStatusResponse:
        async with AsyncRootClient(root_target) as client:
            return await client.status()

    status = cluster.loop.run(_go())
    (bundle,) = status.bundles
    assert bundle.name == "ads" and len(bundle.content_hash) == 64 and bundle.model_count == 4
    assert {p.name for p in status.partitions} == {"pa", "pb", "ps"}
    assert status.settings["trim"] == "true" and status.settings["compression"] == "lz4"


def test_root_names_the_resolved_version_to_the_leaf(cluster: Cluster, root_target: str) -> None:
    results = score(cluster, root_target, 1, np.arange(4, dtype=np.uint64), [("m_a", "1"), ("m_c", "9"), "m_b"], request_id="r-version")
    seen = cluster.observed.for_request("r-version")
    # A known version goes as asked; an unknown or omitted one is resolved by the root to the
    # latest version the partition serves, and the leaf is told that version explicitly.
    assert {m: seen[m].version_requested for m in ("m_a", "m_b", "m_c")} == {"m_a": "1", "m_b": "1", "m_c": "1"}
    assert results["m_a"].version == "1" and results["m_c"].version == "1" and results["m_b"].version == "1"
    assert set(seen["m_c"].feature_names) == set(cluster.inputs("m_c"))


def test_admission_comes_before_decoding_client_features(cluster: Cluster) -> None:
    """A root at max_in_flight answers RESOURCE_EXHAUSTED without touching the request's
    tensors: a full root does no decoding work for requests it will not serve."""
    server, port = cluster.loop.run(cluster.start_root(cluster.base_config(max_in_flight=1)))

    async def go() -> grpc.StatusCode:
        async with AsyncRootClient(f"127.0.0.1:{port}") as client:
            slow = asyncio.ensure_future(client.score(1, np.arange(2, dtype=np.uint64), ["m_slow"], timeout_s=WAIT_S))
            try:
                await eventually_async(lambda: server.engine.in_flight, "the slow call in the engine")
                assert server.engine.in_flight == 1
                try:
                    await _score_raw(f"127.0.0.1:{port}", _request(["m_a"], [1], [_corrupt_tensor()]))
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                raise AssertionError("call succeeded")
            finally:
                slow.cancel()
                await asyncio.gather(slow, return_exceptions=True)

    assert cluster.loop.run(go()) is grpc.StatusCode.RESOURCE_EXHAUSTED
