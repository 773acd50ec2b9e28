"""Port ownership: a server binds its port alone unless it asks to share it (the root's
workers); a second server on a held port fails to build with an error naming the address."""

from __future__ import annotations

import asyncio

import pytest

from transport.builder import BuiltServer, build_server
from transport.tls import PLAINTEXT


async def _build(listen: str, reuse_port: bool) -> BuiltServer:
    built = build_server(listen=listen, tls=PLAINTEXT, services=(), reflection_enabled=False, reuse_port=reuse_port)
    await built.server.start()
    return built


def test_second_server_on_a_held_port_fails_to_bind() -> None:
    async def scenario() -> None:
        first = await _build("127.0.0.1:0", reuse_port=False)
        try:
            listen = f"127.0.0.1:{first.port}"
            # gRPC's own default (SO_REUSEPORT on, on Linux) would let this bind and take a
            # share of the first server's connections.
            with pytest.raises(OSError, match=f"cannot bind {listen}: in use"):
                build_server(listen=listen, tls=PLAINTEXT, services=(), reflection_enabled=False)
        finally:
            await first.server.stop(None)

    asyncio.run(scenario())


def test_servers_that_ask_to_share_a_port_share_it() -> None:
    """The root's workers: every one of them sets ``reuse_port``."""

    async def scenario() -> None:
        first = await _build("127.0.0.1:0", reuse_port=True)
        try:
            second = await _build(f"127.0.0.1:{first.port}", reuse_port=True)
            assert second.port == first.port
            await second.server.stop(None)
        finally:
            await first.server.stop(None)

    asyncio.run(scenario())
