"""A small root for tests of the request path without sockets: a catalog, a local store, a
trimmer, and ``ScoreEngine`` in front of in-process leaves that record what they got."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from harness.datagen import generate_local_store
from protos.rootleaf.v1 import leaf_pb2
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.config import FeatureStoreConfig, PartitionConfig, RootConfig
from root.errors import LeafCallError
from root.local_store import LocalFeatureStore
from root.request import ModelRef, ScoreInput
from root.scoring import ScoreEngine
from tests.doubles import InProcessLeafClient
from trimmer import FeatureTrimmer
from wire.codec import decode_all, encode

R, C = Entity.REQUEST, Entity.CANDIDATE
ALLOW = {"m1": ["u_a", "c_a", "ghost"], "m2": ["c_b"]}


class Leaf:
    """An in-process leaf: scores = row sum of the candidate features it got; records requests."""

    def __init__(self, fail: grpc.StatusCode | None = None) -> None:
        self.requests: list[leaf_pb2.LeafRequest] = []
        self.fail = fail
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.cancelled = False

    async def __call__(self, request: leaf_pb2.LeafRequest) -> leaf_pb2.LeafResponse:
        self.requests.append(request)
        self.entered.set()
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if self.fail is not None:
            raise LeafCallError(self.fail, "leaf says no")
        arrays = decode_all(request.features)
        n = request.num_candidates
        total = np.zeros(n, dtype=np.float32)
        for array in arrays.values():
            if array.shape[0] == n and array.dtype.kind == "f":
                total += array.reshape(n, -1).sum(axis=1).astype(np.float32)
        return leaf_pb2.LeafResponse(model=request.model, version="7", outputs=[encode("score", total)])


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[tuple[RootConfig, FeatureCatalog, FeatureTrimmer]]:
    catalog = FeatureCatalog.of(
        [
            FeatureSpec("u_a", R, "float32", ()),
            FeatureSpec("c_a", C, "float32", (), kind="ratio"),
            FeatureSpec("c_b", C, "float32", (2,), kind="embedding"),
            FeatureSpec("c_c", C, "int32", (3,), kind="ids"),
        ]
    )
    generate_local_store(catalog, tmp_path / "store", users=4, items=20, seed=2)
    bundle = tmp_path / "module_info.json"
    bundle.write_text(json.dumps({m: [{"version": "1", "input_names": f, "output_names": ["score"]}] for m, f in ALLOW.items()}))
    config = RootConfig(
        catalog=tmp_path / "catalog.json",
        partitions={
            "p1": PartitionConfig("p1", ("in-process",), ("m1", "m3")),
            "p2": PartitionConfig("p2", ("in-process",), ("m2",)),
        },
        feature_store=FeatureStoreConfig(path=tmp_path / "store"),
        max_in_flight=1,
        max_candidates=10,
    )
    trimmer = FeatureTrimmer({"b": bundle}, watch=False)
    yield config, catalog, trimmer
    trimmer.close()


def make_engine(setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer], p1: Leaf, p2: Leaf, **overrides: object) -> ScoreEngine:
    config, catalog, trimmer = setup
    config = replace(config, **overrides)  # type: ignore[arg-type]
    assert config.feature_store.path is not None
    store = LocalFeatureStore(config.feature_store.path, catalog)
    return ScoreEngine(config, catalog, store, trimmer, {"p1": InProcessLeafClient(p1), "p2": InProcessLeafClient(p2)})


def score_input(models: tuple[str, ...] = ("m1", "m2", "m3"), n: int = 5, **kw: object) -> ScoreInput:
    return ScoreInput("rid", 1, np.arange(n, dtype=np.uint64), tuple(ModelRef(m) for m in models), **kw)  # type: ignore[arg-type]
