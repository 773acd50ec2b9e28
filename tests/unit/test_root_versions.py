"""Version agreement on the root: the version a leaf runs is the version whose allowlist the
root applied, resolved among the versions the partition serves (no sockets: in-process leaves)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from protos.rootleaf.v1 import leaf_pb2
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.config import FeatureStoreConfig, PartitionConfig, RootConfig
from harness.datagen import generate_local_store
from root.errors import LeafCallError
from tests.doubles import InProcessLeafClient
from root.local_store import LocalFeatureStore
from root.request import ModelOutcome, ModelRef, ScoreInput
from root.scoring import ScoreEngine
from trimmer import FeatureTrimmer
from wire.codec import encode

R, C = Entity.REQUEST, Entity.CANDIDATE
# v2 drops c_old, which v1 needs, and adds c_new.
BUNDLE = {
    "m": [
        {"version": "1", "input_names": ["u", "c_old"], "output_names": ["score"]},
        {"version": "2", "input_names": ["u", "c_new"], "output_names": ["score"]},
    ]
}
SIGNATURES = {v["version"]: set(v["input_names"]) for v in BUNDLE["m"]}
ALL = {"u", "c_old", "c_new"}


class VersionedLeaf:
    """Serves exactly the versions in ``loaded``; refuses others as a real leaf does, and
    checks that every request carries exactly its version's features."""

    def __init__(self, loaded: set[str], untrimmed: bool = False) -> None:
        self.loaded = loaded
        self.untrimmed = untrimmed
        self.served: list[tuple[str, frozenset[str]]] = []

    async def __call__(self, request: leaf_pb2.LeafRequest) -> leaf_pb2.LeafResponse:
        if request.version not in self.loaded:
            raise LeafCallError(grpc.StatusCode.FAILED_PRECONDITION, f"version {request.version!r} is not loaded")
        names = frozenset(t.name for t in request.features)
        assert names == (ALL if self.untrimmed else SIGNATURES[request.version]), (request.version, names)
        self.served.append((request.version, names))
        n = request.num_candidates
        return leaf_pb2.LeafResponse(
            model=request.model, version=request.version, outputs=[encode("score", np.zeros(n, np.float32))]
        )


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[tuple[RootConfig, FeatureCatalog, FeatureTrimmer]]:
    catalog = FeatureCatalog.of(
        [FeatureSpec("u", R, "float32", ()), FeatureSpec("c_old", C, "float32", ()), FeatureSpec("c_new", C, "float32", ())]
    )
    generate_local_store(catalog, tmp_path / "store", users=4, items=20, seed=2)
    bundle = tmp_path / "module_info.json"
    bundle.write_text(json.dumps(BUNDLE))
    config = RootConfig(
        catalog=tmp_path / "catalog.json",
        partitions={"p": PartitionConfig("p", ("in-process",), ("m",))},
        feature_store=FeatureStoreConfig(path=tmp_path / "store"),
    )
    trimmer = FeatureTrimmer({"b": bundle}, watch=False)
    yield config, catalog, trimmer
    trimmer.close()


def _score(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer],
    leaf: VersionedLeaf,
    reported: list[str] | None,
    version: str | None = None,
    **overrides: object,
) -> ModelOutcome:
    config, catalog, trimmer = setup
    config = replace(config, **overrides)  # type: ignore[arg-type]
    assert config.feature_store.path is not None
    store = LocalFeatureStore(config.feature_store.path, catalog)
    client = InProcessLeafClient(leaf, None if reported is None else {"m": reported})
    engine = ScoreEngine(config, catalog, store, trimmer, {"p": client})
    request = ScoreInput("rid", 1, np.arange(3, dtype=np.uint64), (ModelRef("m", version),))
    (outcome,) = asyncio.run(engine.score(request))
    return outcome


def _requests(model: str, version: str, decision: str) -> float:
    labels = {"model": model, "version": version, "decision": decision}
    return REGISTRY.get_sample_value("rootleaf_root_model_requests_total", labels) or 0.0


# The version rules (README, "Model versions"; ``root.versions.VersionResolver.resolve``),
# one row each. The bundle lists m 1 and 2; ``loaded`` is what the partition's leaf serves.
RULES = [
    # 1. pinned and served: runs as asked, with its allowlist when listed, else untrimmed
    ({"1", "2"}, "1", "1", "exact"),
    ({"1", "7"}, "7", "7", "untrimmed"),
    ({"2", "7"}, "7", "7", "untrimmed"),
    # 2. listed but served by no leaf: that model fails, nothing is sent
    ({"1"}, "2", None, "FAILED_PRECONDITION"),
    # 3. omitted, or neither served nor listed: the newest listed version a leaf serves
    ({"1"}, None, "1", "latest"),  # rollout window: no leaf has loaded v2 yet
    ({"1", "2"}, None, "2", "latest"),
    ({"2"}, None, "2", "latest"),
    ({"1"}, "9", "1", "latest"),
    ({"1", "2"}, "9", "2", "latest"),
    # 4. no listed version served: untrimmed, on the version asked for if served, else the newest
    ({"7"}, None, "7", "untrimmed"),
    ({"7", "8"}, "7", "7", "untrimmed"),
    ({"7", "8"}, "9", "8", "untrimmed"),
]


@pytest.mark.parametrize("loaded, asked, expected, decision", RULES)
def test_version_rules(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer],
    loaded: set[str], asked: str | None, expected: str | None, decision: str,
) -> None:
    leaf = VersionedLeaf(loaded, untrimmed=decision == "untrimmed")
    before = _requests("m", expected or "", decision)
    outcome = _score(setup, leaf, sorted(loaded), asked)
    if expected is None:
        assert outcome.error_code is grpc.StatusCode[decision]
        assert leaf.served == []  # nothing was sent with another version's allowlist
        return
    assert outcome.error_code is grpc.StatusCode.OK, outcome.error_message
    assert outcome.version == expected
    features = ALL if decision == "untrimmed" else frozenset(SIGNATURES[expected])
    assert leaf.served == [(expected, features)]
    assert _requests("m", expected, decision) == before + 1


def test_a_pinned_version_no_leaf_serves_is_a_per_model_error(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer],
) -> None:
    leaf = VersionedLeaf({"1"})
    outcome = _score(setup, leaf, ["1"], "2")
    assert outcome.error_code is grpc.StatusCode.FAILED_PRECONDITION
    assert "no leaf of partition 'p' serves version '2'" in outcome.error_message
    assert leaf.served == []  # nothing was sent with the wrong allowlist


def test_a_leaf_that_unloaded_the_version_is_re_resolved_once(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer],
) -> None:
    # The root still believes v2 is loaded (its last refresh), the leaf has gone back to v1.
    leaf = VersionedLeaf({"1"})
    outcome = _score(setup, leaf, ["1", "2"])
    assert outcome.error_code is grpc.StatusCode.OK, outcome.error_message
    assert outcome.version == "1"
    assert leaf.served == [("1", frozenset(SIGNATURES["1"]))]  # re-fetched v1's features


def test_unknown_loaded_versions_use_the_bundle_and_the_leaf_refuses_mismatches(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer],
) -> None:
    # Nothing known about the partition: the bundle's latest is named, and a leaf without it
    # refuses (FAILED_PRECONDITION) rather than running v1 on v2's features.
    leaf = VersionedLeaf({"1"})
    outcome = _score(setup, leaf, None)
    assert outcome.error_code is grpc.StatusCode.FAILED_PRECONDITION
    assert leaf.served == []


def test_untrimmed_requests_name_a_served_version(setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer]) -> None:
    # Every feature goes, so any loaded version can run: v2 is asked for, only v1 is served.
    leaf = VersionedLeaf({"1"}, untrimmed=True)
    outcome = _score(setup, leaf, ["1"], "2", trim=False)
    assert outcome.error_code is grpc.StatusCode.OK, outcome.error_message
    assert leaf.served == [("1", frozenset(ALL))]


def test_client_version_strings_never_become_metric_labels(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer],
) -> None:
    """Before its partition reports versions, an untrimmed model runs whatever version the
    client names; 200 distinct names add no series to those one request creates."""
    config, catalog, trimmer = setup
    assert config.feature_store.path is not None

    async def any_version(request: leaf_pb2.LeafRequest) -> leaf_pb2.LeafResponse:
        return leaf_pb2.LeafResponse(
            model=request.model, version="1", outputs=[encode("score", np.zeros(request.num_candidates, np.float32))]
        )

    engine = ScoreEngine(
        replace(config, trim=False), catalog, LocalFeatureStore(config.feature_store.path, catalog), trimmer,
        {"p": InProcessLeafClient(any_version, None)},
    )

    def series() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        return {
            (sample.name, tuple(sorted(sample.labels.items())))
            for family in REGISTRY.collect() if family.name.startswith("rootleaf_")
            for sample in family.samples
        }

    async def burst(versions: list[str | None]) -> list[ModelOutcome]:
        out = []
        for i, version in enumerate(versions):
            request = ScoreInput(f"r{i}", 1, np.arange(3, dtype=np.uint64), (ModelRef("m", version),))
            out.extend(await engine.score(request))
        return out

    asyncio.run(burst([None]))  # the series a request of this model creates anyway
    before = series()
    outcomes = asyncio.run(burst([f"client-text-{i}" for i in range(200)]))
    assert all(o.error_code is grpc.StatusCode.OK for o in outcomes)
    assert series() - before == set()
