"""The client-facing root accepts requests up to a limit sized from its request limits."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import grpc
import pytest

from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.config import FeatureStoreConfig, PartitionConfig, RootConfig
from root.server import create_server
from harness.datagen import generate_local_store
from wire.protowire import varint

MIB = 1 << 20


def _config(tmp_path: Path) -> RootConfig:
    catalog = FeatureCatalog.of([FeatureSpec("u0", Entity.REQUEST, "float32", ()), FeatureSpec("c0", Entity.CANDIDATE, "float32", ())])
    catalog.save(tmp_path / "catalog.json")
    generate_local_store(catalog, tmp_path / "store", users=4, items=8, seed=1)
    return RootConfig(
        catalog=tmp_path / "catalog.json",
        partitions={"p": PartitionConfig("p", ("127.0.0.1:9",), ("m",))},
        feature_store=FeatureStoreConfig(kind="local", path=tmp_path / "store"),
    )


def test_the_roots_receive_limit_is_sized_from_its_request_limits(tmp_path: Path) -> None:
    config = _config(tmp_path)
    derived = config.receive_message_bytes
    assert config.max_request_feature_bytes < derived < 8 * MIB  # far below the former 256 MiB
    assert dataclasses.replace(config, max_request_feature_bytes=16 * MIB).receive_message_bytes > 16 * MIB
    assert dataclasses.replace(config, max_receive_message_bytes=MIB).receive_message_bytes == MIB
    assert config.settings()["max_receive_message_bytes"] == str(derived)
    with pytest.raises(ValueError, match="max_receive_message_bytes"):
        dataclasses.replace(config, max_receive_message_bytes=-1)

    async def scenario() -> tuple[grpc.StatusCode, grpc.StatusCode]:
        server, port = create_server(config)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * MIB)]) as channel:
                call = channel.unary_unary("/rootleaf.v1.Root/Score", request_serializer=None, response_deserializer=None)
                codes = []
                for size in (derived + 1, derived - 1024):  # one byte over the limit, and just under it
                    try:
                        await call(b"\x0a" + varint(size - 1 - len(varint(size))) + bytes(size - 1 - len(varint(size))), timeout=30)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code())
                return codes[0], codes[1]
        finally:
            await server.stop(None)

    over, under = asyncio.run(scenario())
    assert over == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert under == grpc.StatusCode.INVALID_ARGUMENT  # parsed, and refused for what it holds

