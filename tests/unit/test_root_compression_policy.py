"""``compression = "auto"``: LZ4 for a partition when the link bounds and not the CPU; the
estimates are refreshed by requests packed both ways; and a root on ``auto`` scores as the
fixed settings do."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Sequence

import grpc
import numpy as np
import pytest

from harness.datagen import generate_local_store
from protos.rootleaf.v1 import leaf_pb2
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.compression_policy import FIRST_CPU_WINDOW, AutoCompression
from root.config import FeatureStoreConfig, PartitionConfig, RootConfig
from root.local_store import LocalFeatureStore
from root.request import ModelRef, ScoreInput
from root.scoring import ScoreEngine
from tests.doubles import InProcessLeafClient
from tests.unit.scoring_setup import Leaf, make_engine, score_input, setup  # noqa: F401  (fixture)
from trimmer import FeatureTrimmer
from wire.codec import Compression, Encoding, decode_all
from wire.pack_format import RECORD


def _policy(link_gbps: float, raw: int, lz4: int, lz4_cpu_s: float, cpu_s: float) -> AutoCompression:
    policy = AutoCompression(link_gbps)
    assert policy.choose("p") == (Compression.NONE, True)  # nothing known yet: measure both ways
    policy.observe("p", raw, lz4, lz4_cpu_s)
    assert policy.compressing() == {"p": False}  # nothing before the CPU per request is known
    # The CPU per request as measured over the first window: here set by the window's length.
    started = time.process_time()
    while time.process_time() - started < cpu_s * FIRST_CPU_WINDOW:
        pass
    for _ in range(FIRST_CPU_WINDOW):
        policy.request_done()
    return policy


def test_a_slow_link_compresses_and_a_fast_one_does_not() -> None:
    # 1 MB raw, 300 KB with LZ4 (1 ms of CPU); the rest of a request ~2 ms of CPU.
    slow = _policy(0.5, 1_000_000, 300_000, 0.001, 0.002)  # 16 ms on the link raw: it bounds
    assert slow.compressing() == {"p": True}
    assert slow.choose("p")[0] is Compression.LZ4
    fast = _policy(100.0, 1_000_000, 300_000, 0.001, 0.002)  # 0.08 ms on the link: the CPU bounds
    assert fast.compressing() == {"p": False}
    assert fast.choose("p")[0] is Compression.NONE


def test_without_a_link_speed_nothing_is_compressed() -> None:
    policy = _policy(0.0, 1_000_000, 1_000, 0.0001, 0.002)
    assert policy.compressing() == {"p": False}


def test_lz4_that_saves_nothing_is_not_used() -> None:
    policy = _policy(0.01, 1_000_000, 1_000_000, 0.001, 0.002)
    assert policy.compressing() == {"p": False}


def test_one_request_in_sample_every_is_packed_both_ways() -> None:
    policy = AutoCompression(1.0, sample_every=4)
    assert policy.choose("p")[1] and policy.choose("p")[1]  # until a sample is observed
    policy.observe("p", 100, 50, 0.0)
    assert [policy.choose("p")[1] for _ in range(8)] == [False, False, False, True] * 2


def test_auto_rejects_a_negative_link() -> None:
    with pytest.raises(ValueError):
        AutoCompression(-1.0)


@pytest.mark.parametrize("link_gbps", [0.0, 1e-6, 100.0])
def test_a_root_on_auto_scores_as_fixed_settings_do(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer], link_gbps: float  # noqa: F811
) -> None:
    def scores(**overrides: object) -> list[dict[str, object]]:
        engine = make_engine(setup, Leaf(), Leaf(), max_in_flight=4, **overrides)
        outs = []
        for _ in range(6):  # past the first (both-ways) request of each partition
            outcomes = asyncio.run(engine.score(score_input()))
            assert all(o.error_code is grpc.StatusCode.OK for o in outcomes)
            outs.append({o.model: decode_all(o.outputs)["score"].tolist() for o in outcomes})
        return outs

    assert scores(compression="auto", link_gbps=link_gbps) == scores(compression="lz4") == scores(compression="none")


class _Recording(InProcessLeafClient):
    """The in-process partition, keeping each call's encodings (RAW 0, LZ4 1) as received."""

    def __init__(self, handler: Leaf) -> None:
        super().__init__(handler)
        self.encodings: list[set[int]] = []

    async def score_partition(
        self, payload: bytes, timeout_s: float, models: Sequence[tuple[str, str]] = ()
    ) -> leaf_pb2.PartitionResponse:
        table = leaf_pb2.PartitionRequest.FromString(payload).features.table
        self.encodings.append({int(e) for e in np.frombuffer(table, dtype=RECORD)["encoding"]})
        return await super().score_partition(payload, timeout_s, models)


@pytest.mark.parametrize("link_gbps, compressed", [(1e-6, True), (100.0, False), (0.0, False)])
def test_auto_sends_lz4_over_a_slow_link_and_raw_over_a_fast_one(
    tmp_path: Path, link_gbps: float, compressed: bool
) -> None:
    # Mostly-zero id lists: LZ4 shrinks them many times over.
    catalog = FeatureCatalog.of([
        FeatureSpec("u_a", Entity.REQUEST, "float32", ()),
        FeatureSpec("c_ids", Entity.CANDIDATE, "int64", (64,), kind="ids", zero_fraction=0.95),
    ])
    generate_local_store(catalog, tmp_path / "store", users=4, items=20, seed=2)
    bundle = tmp_path / "module_info.json"
    bundle.write_text(json.dumps({"m": [{"version": "1", "input_names": ["u_a", "c_ids"], "output_names": ["score"]}]}))
    config = RootConfig(
        catalog=tmp_path / "catalog.json", partitions={"p": PartitionConfig("p", ("in-process",), ("m",))},
        feature_store=FeatureStoreConfig(path=tmp_path / "store"), compression="auto", link_gbps=link_gbps,
    )
    trimmer = FeatureTrimmer({"b": bundle}, watch=False)
    leaf = _Recording(Leaf())
    try:
        engine = ScoreEngine(config, catalog, LocalFeatureStore(tmp_path / "store", catalog), trimmer, {"p": leaf})
        for _ in range(FIRST_CPU_WINDOW + 4):
            outcomes = asyncio.run(engine.score(ScoreInput("r", 1, np.arange(10, dtype=np.uint64), (ModelRef("m"),))))
            assert outcomes[0].error_code is grpc.StatusCode.OK
    finally:
        trimmer.close()
    # Raw until the first CPU window is measured, then LZ4 only where the link bounds.
    lz4 = int(Encoding.LZ4)
    assert all(lz4 not in used for used in leaf.encodings[:FIRST_CPU_WINDOW])
    assert all((lz4 in used) is compressed for used in leaf.encodings[FIRST_CPU_WINDOW:])
