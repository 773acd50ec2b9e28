"""The request path without sockets: ``ScoreEngine`` with in-process leaf clients."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from wire.codec import DType, decode_all, encode
from root.catalog import Entity, FeatureCatalog
from root.config import FeatureStoreConfig, RootConfig
from root.errors import InvalidRequest, ModelNotFound, Overloaded, StoreUnavailable
from root.feature_store import FeatureStoreError, FetchResult
from tests.doubles import InProcessLeafClient
from tests.unit.scoring_setup import Leaf, make_engine, score_input, setup  # noqa: F401  (fixture)
from root.local_store import LocalFeatureStore
from root.client_features import DECODE_ON_LOOP_BYTES
from root.request import ScoreInput
from root.scoring import ScoreEngine
from trimmer import FeatureTrimmer

def test_trimmed_fan_out_and_merge(setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer]) -> None:
    p1, p2 = Leaf(), Leaf()
    engine = make_engine(setup, p1, p2)
    ghost = REGISTRY.get_sample_value("rootleaf_root_unknown_allowlist_features_total", {"model": "m1"}) or 0.0
    outcomes = asyncio.run(engine.score(score_input()))
    assert [o.model for o in outcomes] == ["m1", "m2", "m3"]
    assert all(o.error_code is grpc.StatusCode.OK and o.version == "7" for o in outcomes)
    sent = {r.model: {t.name for t in r.features} for r in p1.requests + p2.requests}
    assert sent == {"m1": {"u_a", "c_a"}, "m2": {"c_b"}, "m3": {"u_a", "c_a", "c_b", "c_c"}}
    assert REGISTRY.get_sample_value("rootleaf_root_unknown_allowlist_features_total", {"model": "m1"}) == ghost + 1


def test_trim_off_sends_everything(setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer]) -> None:
    p1, p2 = Leaf(), Leaf()
    trimmed = asyncio.run(make_engine(setup, Leaf(), Leaf()).score(score_input(("m2",))))
    untrimmed = asyncio.run(make_engine(setup, p1, p2, trim=False).score(score_input(("m2",))))
    assert {t.name for t in p2.requests[0].features} == {"u_a", "c_a", "c_b", "c_c"}
    # This leaf sums every float candidate feature it gets, so the extra c_a shows in the score.
    got_trimmed = decode_all(trimmed[0].outputs)["score"]
    got_untrimmed = decode_all(untrimmed[0].outputs)["score"]
    assert got_untrimmed.shape == (5,) and not np.array_equal(got_trimmed, got_untrimmed)


def test_failed_partition_errors_its_models_only(setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer]) -> None:
    engine = make_engine(setup, Leaf(), Leaf(fail=grpc.StatusCode.UNAVAILABLE))
    outcomes = {o.model: o for o in asyncio.run(engine.score(score_input()))}
    assert outcomes["m2"].error_code is grpc.StatusCode.UNAVAILABLE and "p2" in outcomes["m2"].error_message
    assert outcomes["m1"].error_code is grpc.StatusCode.OK and outcomes["m3"].error_code is grpc.StatusCode.OK


@pytest.mark.parametrize("partition_calls", [True, False])
def test_a_partition_seen_down_fails_its_models_at_once_without_a_call(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer], partition_calls: bool
) -> None:
    """A hung leaf would hold a call for its whole timeout: while the last health round found
    no serving address for p2, its models fail UNAVAILABLE and nothing is sent to it."""
    config, catalog, trimmer = setup
    config = replace(config, partition_calls=partition_calls)
    assert config.feature_store.path is not None
    p1, p2 = Leaf(), Leaf()
    leaves = {"p1": InProcessLeafClient(p1), "p2": InProcessLeafClient(p2)}
    engine = ScoreEngine(config, catalog, LocalFeatureStore(config.feature_store.path, catalog), trimmer, leaves,
                         partition_down=lambda partition: partition == "p2")

    async def go() -> dict[str, tuple[grpc.StatusCode, str]]:
        p2.gate = asyncio.Event()  # never set: p2 would never answer
        return {o.model: (o.error_code, o.error_message) for o in await engine.score(score_input(), timeout_s=30.0)}

    outcomes = asyncio.run(go())
    assert outcomes["m1"][0] is outcomes["m3"][0] is grpc.StatusCode.OK
    assert outcomes["m2"] == (grpc.StatusCode.UNAVAILABLE, "partition 'p2': no leaf address serving at the last health check")
    assert p2.requests == []


def test_slow_partition_times_out_its_models_only(setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer]) -> None:
    slow = Leaf()
    engine = make_engine(setup, Leaf(), slow)

    async def go() -> dict[str, grpc.StatusCode]:
        slow.gate = asyncio.Event()
        return {o.model: o.error_code for o in await engine.score(score_input(), timeout_s=0.2)}

    codes = asyncio.run(go())
    assert codes == {"m1": grpc.StatusCode.OK, "m2": grpc.StatusCode.DEADLINE_EXCEEDED, "m3": grpc.StatusCode.OK}


def test_cancel_propagates_to_leaf_calls(setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer]) -> None:
    leaf = Leaf()
    engine = make_engine(setup, leaf, Leaf())

    async def go() -> None:
        leaf.gate = asyncio.Event()
        task = asyncio.create_task(engine.score(score_input(("m1",)), timeout_s=30))
        await asyncio.wait_for(leaf.entered.wait(), 5)
        assert engine.in_flight == 1
        with pytest.raises(Overloaded):
            await engine.score(score_input(("m1",)))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.in_flight == 0

    asyncio.run(go())
    assert leaf.cancelled


def test_client_features_override_and_add(setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer]) -> None:
    p1 = Leaf()
    engine = make_engine(setup, p1, Leaf())
    extra = {"u_a": np.array([9.0], np.float32), "ghost": np.array([[1, 2]], np.int64)}
    asyncio.run(engine.score(score_input(("m1",), request_features=extra)))
    arrays = decode_all(p1.requests[0].features)
    assert arrays["u_a"].tolist() == [9.0] and arrays["ghost"].tolist() == [[1, 2]]


@pytest.mark.parametrize(
    ("inp", "exc", "text"),
    [
        (score_input(()), InvalidRequest, "models"),
        (score_input(n=0), InvalidRequest, "candidate_ids"),
        (score_input(n=11), InvalidRequest, "max_candidates=10"),
        (score_input(("m1", "zz")), ModelNotFound, "'zz'"),
        (score_input(("m1",), request_features={"u_a": np.zeros((1,), np.float64)}), InvalidRequest, "u_a"),
        (score_input(("m1",), request_features={"c_a": np.zeros((1,), np.float32)}), InvalidRequest, "candidate"),
        # A dtype the root cannot pass on to the leaves (none encodes uint16) is the client's error.
        (score_input(("m1",), request_features={"u_x": np.zeros((1, 2), np.uint16)}), InvalidRequest, "u_x"),
        (score_input(("m1",), request_tensors=(encode("u_x", np.zeros((1, 2), np.uint16), dtype=DType.BFLOAT16),)),
         InvalidRequest, "u_x.*bfloat16"),
        (score_input(("m1",), request_tensors=(encode("u_a", np.zeros((1,), np.float32)),) * 2), InvalidRequest, "twice"),
        (score_input(("m1",), request_tensors=tuple(encode(f"x{i}", np.zeros((1, 64), np.float32)) for i in range(3))),
         InvalidRequest, "max_request_features=2"),
        (score_input(("m1",), request_tensors=(encode("x", np.zeros((1, 300), np.float32)),)),
         InvalidRequest, "max_request_feature_bytes=1024"),
    ],
)
def test_validation(setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer], inp: ScoreInput, exc: type, text: str) -> None:
    engine = make_engine(setup, Leaf(), Leaf(), max_request_features=2, max_request_feature_bytes=1024)
    with pytest.raises(exc, match=text):
        asyncio.run(engine.score(inp))


class CountingExecutor(ThreadPoolExecutor):
    """A real thread pool that counts the calls it runs."""

    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="test-encode")
        self.calls = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().submit(*args, **kwargs)


@pytest.mark.parametrize("partition_calls", [False, True])
def test_client_tensors_are_decoded_and_large_ones_off_the_loop(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer], partition_calls: bool
) -> None:
    from dataclasses import replace

    from root.scoring import ENCODE_ON_LOOP_BYTES

    config, catalog, trimmer = setup
    config = replace(config, partition_calls=partition_calls)
    p1 = Leaf()
    executor = CountingExecutor()
    store = LocalFeatureStore(tmp_store(config), catalog)
    engine = ScoreEngine(config, catalog, store, trimmer, {"p1": InProcessLeafClient(p1), "p2": InProcessLeafClient(Leaf())}, executor)
    try:
        small = encode("u_a", np.array([9.0], np.float32))
        asyncio.run(engine.score(score_input(("m1",), request_tensors=(small,))))
        assert executor.calls == 0  # a small tensor decodes, and a small request encodes, on the loop
        assert decode_all(p1.requests[-1].features)["u_a"].tolist() == [9.0]
        large = np.arange(DECODE_ON_LOOP_BYTES // 4 + 1, dtype=np.float32).reshape(1, -1)
        asyncio.run(engine.score(score_input(("m3",), request_tensors=(encode("u_big", large),))))
        assert executor.calls == 1  # decoding in the executor; the request is still small to encode
        np.testing.assert_array_equal(decode_all(p1.requests[-1].features)["u_big"], large)
        huge = np.arange(ENCODE_ON_LOOP_BYTES // 4 + 1, dtype=np.float32).reshape(1, -1)
        asyncio.run(engine.score(score_input(("m3",), request_tensors=(encode("u_big", huge),))))
        assert executor.calls == 3  # decoding, then encoding, each in the executor
        np.testing.assert_array_equal(decode_all(p1.requests[-1].features)["u_big"], huge)
    finally:
        executor.shutdown()


def tmp_store(config: RootConfig) -> Path:
    assert config.feature_store.path is not None
    return config.feature_store.path


def test_fetch_plans_follow_allowlist_reloads_and_count_unknown_names_per_request(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer], tmp_path: Path
) -> None:
    p1, p2 = Leaf(), Leaf()
    engine = make_engine(setup, p1, p2, max_in_flight=4)
    _, _, trimmer = setup
    ghost = REGISTRY.get_sample_value("rootleaf_root_unknown_allowlist_features_total", {"model": "m1"}) or 0.0

    async def twice() -> None:
        for _ in range(2):
            await engine.score(score_input(("m1", "m2")))

    asyncio.run(twice())
    assert REGISTRY.get_sample_value("rootleaf_root_unknown_allowlist_features_total", {"model": "m1"}) == ghost + 2
    bundle = tmp_path / "module_info.json"
    bundle.write_text(json.dumps({
        "m1": [{"version": "1", "input_names": ["c_c"], "output_names": ["score"]}],
        "m2": [{"version": "1", "input_names": ["c_b", "u_a"], "output_names": ["score"]}],
    }))
    trimmer.reload_now()
    asyncio.run(twice())
    assert [{t.name for t in r.features} for r in p1.requests] == [{"u_a", "c_a"}] * 2 + [{"c_c"}] * 2
    assert [{t.name for t in r.features} for r in p2.requests] == [{"c_b"}] * 2 + [{"c_b", "u_a"}] * 2
    assert REGISTRY.get_sample_value("rootleaf_root_unknown_allowlist_features_total", {"model": "m1"}) == ghost + 2


class FaultyStore:
    """The real local store behind a fault switch: "error" raises, "slow" answers after 2 s."""

    def __init__(self, inner: LocalFeatureStore, fault: str) -> None:
        self.inner, self.fault = inner, fault

    async def fetch(self, entity: Entity, ids: np.ndarray, names: Sequence[str]) -> FetchResult:
        if self.fault == "error":
            raise FeatureStoreError("connection refused")
        if self.fault == "slow":
            await asyncio.sleep(2.0)
        return await self.inner.fetch(entity, ids, names)

    async def check(self) -> None:
        await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()


def _engine_with_store(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer], fault: str, **store_settings: object
) -> tuple[ScoreEngine, Leaf]:
    from dataclasses import replace

    config, catalog, trimmer = setup
    config = replace(config, feature_store=replace(config.feature_store, **store_settings))  # type: ignore[arg-type]
    assert config.feature_store.path is not None
    store = FaultyStore(LocalFeatureStore(config.feature_store.path, catalog), fault)
    leaf = Leaf()
    return ScoreEngine(config, catalog, store, trimmer, {"p1": InProcessLeafClient(leaf), "p2": InProcessLeafClient(Leaf())}), leaf


@pytest.mark.parametrize("fault", ["error", "slow"])
def test_store_failure_fails_the_request_unavailable_by_default(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer], fault: str
) -> None:
    engine, leaf = _engine_with_store(setup, fault, fetch_timeout_ms=200)
    with pytest.raises(StoreUnavailable, match="connection refused" if fault == "error" else "fetch_timeout_ms=200"):
        asyncio.run(engine.score(score_input(("m1",))))
    assert leaf.requests == []  # nothing was sent on made-up data
    assert engine.in_flight == 0


@pytest.mark.parametrize(("fault", "reason"), [("error", "error"), ("slow", "timeout")])
def test_store_failure_serves_defaults_when_configured(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer], fault: str, reason: str
) -> None:
    engine, leaf = _engine_with_store(setup, fault, fetch_timeout_ms=200, on_error="defaults")
    labels = {"entity": "candidate", "reason": reason}
    before = REGISTRY.get_sample_value("rootleaf_root_feature_store_degraded_total", labels) or 0.0
    outcomes = asyncio.run(engine.score(score_input(("m1",))))
    assert outcomes[0].error_code is grpc.StatusCode.OK
    sent = decode_all(leaf.requests[0].features)
    assert set(sent) == {"u_a", "c_a"}
    assert not sent["c_a"].any() and not sent["u_a"].any()  # catalog defaults (0.0)
    assert REGISTRY.get_sample_value("rootleaf_root_feature_store_degraded_total", labels) == before + 1


def test_store_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="on_error"):
        FeatureStoreConfig(path=Path("s"), on_error="retry")
    with pytest.raises(ValueError, match="fetch_timeout_ms"):
        FeatureStoreConfig(path=Path("s"), fetch_timeout_ms=-1)


def test_partition_calls_see_a_reloaded_allowlist_and_a_new_version_on_the_next_request(
    setup: tuple[RootConfig, FeatureCatalog, FeatureTrimmer], tmp_path: Path
) -> None:
    """Partition calls keep layouts (union, indexes, serialised models) between requests:
    a changed allowlist or a new version must show on the very next request."""
    p1, p2 = Leaf(), Leaf()
    engine = make_engine(setup, p1, p2, max_in_flight=4, partition_calls=True)
    _, _, trimmer = setup
    bundle = tmp_path / "module_info.json"

    def sent(leaf: Leaf, since: int) -> list[tuple[str, str, set[str]]]:
        return [(r.model, r.version, {t.name for t in r.features}) for r in leaf.requests[since:]]

    async def twice() -> None:
        for _ in range(2):
            await engine.score(score_input(("m1", "m2", "m3")))

    asyncio.run(twice())
    assert sent(p1, 0) == [("m1", "1", {"u_a", "c_a"}), ("m3", "", {"u_a", "c_a", "c_b", "c_c"})] * 2
    assert sent(p2, 0) == [("m2", "1", {"c_b"})] * 2
    # same models, same versions, other features
    bundle.write_text(json.dumps({
        "m1": [{"version": "1", "input_names": ["c_c"], "output_names": ["score"]}],
        "m2": [{"version": "1", "input_names": ["c_b", "u_a"], "output_names": ["score"]}],
    }))
    trimmer.reload_now()
    asyncio.run(twice())
    assert sent(p1, 4) == [("m1", "1", {"c_c"}), ("m3", "", {"u_a", "c_a", "c_b", "c_c"})] * 2
    assert sent(p2, 2) == [("m2", "1", {"c_b", "u_a"})] * 2
    # a new version of m1 (latest wins) with the same features as before: only the version changes
    bundle.write_text(json.dumps({
        "m1": [{"version": "1", "input_names": ["c_c"], "output_names": ["score"]},
               {"version": "2", "input_names": ["c_c"], "output_names": ["score"]}],
        "m2": [{"version": "1", "input_names": ["c_b", "u_a"], "output_names": ["score"]}],
    }))
    trimmer.reload_now()
    asyncio.run(twice())
    assert sent(p1, 8) == [("m1", "2", {"c_c"}), ("m3", "", {"u_a", "c_a", "c_b", "c_c"})] * 2
