"""Versions: policies, hot load under load, removal, and bad model files."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import numpy as np

from leaf.config import LeafConfig, VersionPolicy
from leaf.server import LeafServer
from protos.rootleaf.v1 import leaf_pb2
from tests.service.test_leaf_errors import expect
from tests.service.test_leaf_server import Leaf, export_demo, expected_scores, features, make_request, run, sample, scores_of
from tests.waiting import eventually_async


async def scan(server: LeafServer) -> None:
    """Wait for one complete repository scan that started after this call."""
    repository = server.repository
    ticket = repository.rescan()
    assert await asyncio.to_thread(repository.wait_for_rescan, ticket, 30.0)


async def versions_of(leaf: Leaf, model: str) -> list[str]:
    listed = await leaf.stub.ListModels(leaf_pb2.ListModelsRequest())
    return [list(m.versions) for m in listed.models if m.name == model][0]


def test_hot_load_under_load_switches_without_failures(tmp_path: Path) -> None:
    export_demo(tmp_path, "hot", "1", seed=1)
    arrays = features(16)

    async def body() -> None:
        # A long re-check interval: the watchdog event is what triggers the load.
        config = LeafConfig(tmp_path, max_queue_delay_ms=1, recheck_interval_s=3600)
        async with Leaf(config) as leaf:
            seen: list[str] = []
            switched = asyncio.Event()

            async def client() -> None:
                for _ in range(5000):
                    response = await leaf.stub.Score(make_request("hot", arrays, 16), timeout=10)
                    seen.append(response.version)
                    if response.version == "2":
                        switched.set()
                    if switched.is_set() and seen.count("2") >= 20:
                        return

            clients = [asyncio.create_task(client(), name=f"client-{i}") for i in range(4)]
            # A client that fails stops the wait; its error is raised by the gather below.
            await eventually_async(lambda: len(seen) >= 20 or any(c.done() for c in clients), "20 answers on version 1")
            module2 = await asyncio.to_thread(export_demo, tmp_path, "hot", "2", 2)
            await asyncio.wait_for(asyncio.gather(*clients), timeout=30)  # any failure raises here
            assert seen[0] == "1" and seen[-1] == "2"
            first_two = seen.index("2")
            assert "1" not in seen[first_two + 8 :]  # at most the in-flight ones finish on "1"
            assert await versions_of(leaf, "hot") == ["2"]
            response = await leaf.stub.Score(make_request("hot", arrays, 16))
            np.testing.assert_allclose(scores_of(response), expected_scores(module2, arrays, 16), rtol=1e-5, atol=1e-6)
        assert sample("rootleaf_leaf_requests_total", {"model": "hot", "version": "2", "code": "OK"}) >= 20

    run(body)


def test_version_policies_and_no_substitution(tmp_path: Path) -> None:
    modules = {v: export_demo(tmp_path, "multi", v, seed=int(v)) for v in ("1", "2", "10")}
    arrays = features(3)

    async def body() -> None:
        for policy, loaded in (("all", ["1", "2", "10"]), ("1,2", ["1", "2"]), ("latest:2", ["2", "10"])):
            config = LeafConfig(tmp_path, versions=VersionPolicy.parse(policy))
            async with Leaf(config) as leaf:
                assert await versions_of(leaf, "multi") == loaded
                for version in loaded:
                    response = await leaf.stub.Score(make_request("multi", arrays, 3, version=version))
                    assert response.version == version
                    np.testing.assert_allclose(
                        scores_of(response), expected_scores(modules[version], arrays, 3), rtol=1e-5, atol=1e-6
                    )
                # An empty version means the latest loaded; a named version that is not loaded
                # is refused with FAILED_PRECONDITION, never served by another version.
                response = await leaf.stub.Score(make_request("multi", arrays, 3))
                assert response.version == loaded[-1]
                await expect(
                    leaf.stub.Score(make_request("multi", arrays, 3, version="7")),
                    grpc.StatusCode.FAILED_PRECONDITION, "'7' is not loaded",
                )

    run(body)


def test_corrupt_models_never_take_the_leaf_down(tmp_path: Path) -> None:
    export_demo(tmp_path, "good", "1", seed=1)
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.pt").write_bytes(b"not a torchscript archive")
    arrays = features(5)

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, recheck_interval_s=3600)) as leaf:
            assert (await leaf.stub.Score(make_request("good", arrays, 5))).version == "1"
            await expect(leaf.stub.Score(make_request("broken", arrays, 5)), grpc.StatusCode.UNAVAILABLE, "broken", "no loaded version")
            assert await versions_of(leaf, "broken") == []
            # A corrupt newer version never replaces the good one.
            (tmp_path / "good" / "2").mkdir()
            (tmp_path / "good" / "2" / "model.pt").write_bytes(b"\x00" * 100)
            await scan(leaf.server)
            assert await versions_of(leaf, "good") == ["1"]
            # Nor does the good version's own file turning corrupt in place.
            good1 = tmp_path / "good" / "1" / "model.pt"
            good1.write_bytes(good1.read_bytes()[:500])
            await scan(leaf.server)
            assert (await leaf.stub.Score(make_request("good", arrays, 5))).version == "1"
            # A fixed file is picked up: the version that failed loads once its file changes.
            export_demo(tmp_path, "broken", "1")
            await scan(leaf.server)
            assert (await leaf.stub.Score(make_request("broken", arrays, 5))).version == "1"
            assert sample("rootleaf_leaf_model_loads_total", {"model": "good", "result": "error"}) >= 2

    run(body)


def test_removed_version_is_unloaded_and_previous_reloaded(tmp_path: Path) -> None:
    export_demo(tmp_path, "rolled", "1", seed=1)
    export_demo(tmp_path, "rolled", "2", seed=2)
    (tmp_path / "rolled" / ".3.tmp-copy").mkdir()  # dot-prefixed: an atomic copy in progress
    arrays = features(2)

    async def body() -> None:
        async with Leaf(LeafConfig(tmp_path, recheck_interval_s=3600)) as leaf:
            assert await versions_of(leaf, "rolled") == ["2"]
            shutil.rmtree(tmp_path / "rolled" / "2")
            await scan(leaf.server)
            assert await versions_of(leaf, "rolled") == ["1"]
            assert (await leaf.stub.Score(make_request("rolled", arrays, 2))).version == "1"

    run(body)
