"""What every rootleaf server shares: allocator tuning, message limits, the serve-until-signal
loop and the server wrapper that starts and stops a tier's other parts.

Python gRPC moves 1-8 MB messages 3-4x faster when glibc does not return freed buffers to
the kernel after every message: by default buffers above the mmap threshold (128 KiB,
adaptive) are ``mmap``-ed and ``munmap``-ed per allocation, and the heap is trimmed as soon
as 128 KiB lie free at its top, so each request pays page faults for its payload again.
``tune_allocator`` raises both thresholds once at process start.
"""

from __future__ import annotations

import asyncio
import gc
import ctypes
import ctypes.util
import logging
import os
import signal
from typing import Any, Callable, Final, Protocol, Sequence

import grpc

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3

# 64 MiB: above the largest request a root sends to a leaf in the demo workloads; the cost
# is that up to this much freed memory stays in the process instead of going back to the OS.
DEFAULT_MMAP_THRESHOLD = 64 * 1024 * 1024
DEFAULT_TRIM_THRESHOLD = 256 * 1024 * 1024

# Largest message a channel sends or receives, and a server sends; what a server receives is
# its role's limit (``RootConfig`` / ``LeafConfig.receive_message_bytes``, passed to
# ``transport.builder.build_server``). Larger messages are rejected by gRPC itself
# (RESOURCE_EXHAUSTED) before they reach our code.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

GRPC_OPTIONS: Final[list[tuple[str, int]]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def tune_allocator(
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD, trim_threshold: int = DEFAULT_TRIM_THRESHOLD
) -> bool:
    """Raise glibc's mmap and trim thresholds; returns False where glibc is not in use.

    ``ROOTLEAF_MALLOC_TUNING=0`` disables it (for comparisons in benchmarks).
    """
    if os.environ.get("ROOTLEAF_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
    log.debug("glibc mallopt mmap=%d trim=%d applied=%s", mmap_threshold, trim_threshold, ok)
    return ok


class Servable(Protocol):
    """What ``run_until_signalled`` drives: a built server (``grpc.aio.Server`` fits)."""

    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> Any: ...


def run_until_signalled(
    create: Callable[[], tuple[Servable, int]],
    grace_s: float,
    on_started: Callable[[int], None] | None = None,
) -> None:
    """Tune the allocator, build the server on a new event loop, serve until SIGTERM/SIGINT,
    then drain for up to ``grace_s``. ``on_started(port)`` runs once the server is serving."""
    tune_allocator()

    async def serve() -> None:
        server, port = create()
        await server.start()
        # What start-up built (modules, models, channels) lives as long as the process: out of
        # the cyclic collector's reach, each collection scans only what requests allocate.
        gc.freeze()
        if on_started is not None:
            on_started(port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
            log.info("draining (grace %.1fs)", grace_s)
        finally:
            await server.stop(grace_s)

    asyncio.run(serve())


class ServerWithParts(grpc.aio.Server):
    """A ``grpc.aio.Server`` wrapping the real one, so that a tier's ``start``/``stop`` can
    also start and stop its other parts (threads, watchers, endpoints). Subclasses define
    ``start`` and ``stop``; everything else goes to the wrapped server."""

    def __init__(self, inner: grpc.aio.Server) -> None:
        self._inner = inner

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._inner.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._inner.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._inner.add_secure_port(address, server_credentials)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._inner.wait_for_termination(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
