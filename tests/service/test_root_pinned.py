"""Pinned versions across the wire: an in-process root in front of a real in-process leaf
(loopback gRPC) that serves m_a 1 and 7 while the bundle lists 1 and 2. A client pinning 7
gets 7's scores, untrimmed; pinning 1 gets 1 with its allowlist; no version gets the newest
listed served one (1); pinning 2 (listed, served nowhere) fails that model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from harness.datagen import generate_local_store
from harness.demo_model import build_demo_model
from leaf.config import LeafConfig, VersionPolicy
from leaf.export import export_model
from leaf.server import create_server as create_leaf_server
from protos.rootleaf.v1 import root_pb2, root_pb2_grpc
from root.config import FeatureStoreConfig, PartitionConfig, RootConfig
from tests.service.test_root_service import (
    SEED, USERS, ITEMS, LoopThread, Observed, make_catalog, metric, wait_serving,
)
from harness.leaf_hooks import RecordingInterceptor
from root.server import create_server as create_root_server

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]+` is deprecated:DeprecationWarning")

INPUTS = ["u_s0", "u_emb", "c_r0", "c_ids"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, str, Observed, list[str]]]:
    tmp = tmp_path_factory.mktemp("pinned")
    catalog = make_catalog()
    catalog.save(tmp / "catalog.json")
    generate_local_store(catalog, tmp / "store", USERS, ITEMS, SEED)
    widths = {n: max(1, math.prod(catalog[n].shape)) for n in INPUTS}
    for version, seed in (("1", 1), ("7", 7)):  # different weights: different scores
        export_model(build_demo_model(widths, [8], ["score"], seed=seed), tmp / "repo" / "m_a" / version, INPUTS, ["score"])
    bundle = tmp / "bundles" / "module_info.json"
    bundle.parent.mkdir()
    bundle.write_text(json.dumps({"m_a": [{"version": v, "input_names": INPUTS, "output_names": ["score"]}
                                          for v in ("1", "2")]}))
    loop, observed = LoopThread(), Observed()
    servers = []
    try:
        async def start_leaf() -> int:
            leaf, port = create_leaf_server(
                LeafConfig(repo=tmp / "repo", port=0, torch_threads=1, grace_s=0.0, versions=VersionPolicy("all")),
                interceptors=[RecordingInterceptor([observed])],
            )
            await leaf.start()
            servers.append(leaf)
            return port

        leaf_port = loop.run(start_leaf())
        config = RootConfig(
            catalog=tmp / "catalog.json",
            partitions={"p": PartitionConfig("p", (f"127.0.0.1:{leaf_port}",), ("m_a",))},
            feature_store=FeatureStoreConfig(kind="local", path=tmp / "store"),
            bundles={"b": bundle},
        )

        async def start_root() -> int:
            root, port = create_root_server(config)
            await root.start()
            servers.append(root)
            await wait_serving(f"127.0.0.1:{port}")
            return port

        target = f"127.0.0.1:{loop.run(start_root())}"
        # Until the root has the partition's versions it cannot tell "served": one call makes
        # it refresh them (the leaf refuses the bundle's v2, the root re-resolves to v1).
        assert _score(loop, target, "warm-up", None).version == "1"
        yield loop, target, observed, sorted(catalog.features)
    finally:
        for server in reversed(servers):
            loop.run(server.stop(0))
        loop.close()


def _score(loop: LoopThread, target: str, rid: str, version: str | None) -> root_pb2.ModelResult:
    async def call() -> root_pb2.ScoreResponse:
        async with grpc.aio.insecure_channel(target) as channel:
            ref = root_pb2.ModelRef(name="m_a", version=version) if version else root_pb2.ModelRef(name="m_a")
            return await root_pb2_grpc.RootStub(channel).Score(
                root_pb2.ScoreRequest(request_id=rid, user_id=3, candidate_ids=list(range(8)), models=[ref]), timeout=10)

    (result,) = loop.run(call()).results
    return result


@pytest.mark.parametrize(
    "asked, ran, decision, trimmed",
    [("7", "7", "untrimmed", False), ("1", "1", "exact", True), (None, "1", "latest", True)],
)
def test_a_served_version_runs_as_pinned(
    setup: tuple[LoopThread, str, Observed, list[str]], asked: str | None, ran: str, decision: str, trimmed: bool
) -> None:
    loop, target, observed, every = setup
    rid = f"pinned-{asked}"
    before = metric("rootleaf_root_model_requests_total", {"model": "m_a", "version": ran, "decision": decision})
    result = _score(loop, target, rid, asked)
    assert result.error_code == 0, result.error_message
    assert result.version == ran
    seen = observed.for_request(rid)["m_a"]
    assert seen.version_served == ran
    assert sorted(seen.feature_names) == (sorted(INPUTS) if trimmed else every)
    assert metric("rootleaf_root_model_requests_total", {"model": "m_a", "version": ran, "decision": decision}) == before + 1


def test_a_listed_version_no_leaf_serves_fails_the_model(setup: tuple[LoopThread, str, Observed, list[str]]) -> None:
    loop, target, observed, _ = setup
    result = _score(loop, target, "pinned-2", "2")
    assert result.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert observed.for_request("pinned-2") == {}
