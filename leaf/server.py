"""Leaf server assembly: build (``create_server``), serve until a signal (``serve``), drain.

``create_server`` runs on the caller's event loop thread: it loads the models synchronously,
starts the repository watcher ("leaf-repo-watch", "leaf-repo-loader") and the inference
thread ("leaf-infer-<device>") and the decode threads ("leaf-decode"), binds the port and returns. Health reports SERVING once the
server has started (models are loaded by then). Stopping the returned server drains
in-flight requests for the grace period, then stops those threads and the metrics endpoint,
so one process can create and close several leaves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2

from leaf.admission import InflightBytes
from leaf.batcher import Batcher, BatchPolicy
from leaf.config import LeafConfig
from leaf.device import Placement, configure_threads, resolve_device
from leaf.repository import Repository
from leaf.oip import LeafOipServicer
from leaf.servicer import SERVICE_NAME, LeafServicer
from transport import tracing
from transport.builder import BuiltServer, build_server
from transport.server import ServerWithParts, run_until_signalled
from wire.oip_service import OIP_SERVICE_NAME, oip_handler

__all__ = ["LeafServer", "create_server", "serve"]

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING
TRACED_METHODS = (f"/{SERVICE_NAME}/Score", f"/{SERVICE_NAME}/ScorePartition", f"/{OIP_SERVICE_NAME}/ModelInfer")


class _Runtime:
    """The leaf's non-gRPC parts, closed together (idempotent)."""

    def __init__(self) -> None:
        self.repository: Repository | None = None
        self.batcher: Batcher | None = None
        self.metrics_server: BuiltServer | None = None
        self.decode_executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.repository is not None:
            self.repository.close()
        if self.batcher is not None:
            self.batcher.close()
        if self.decode_executor is not None:
            self.decode_executor.shutdown(wait=True)
        if self.metrics_server is not None:
            self.metrics_server.close_metrics()
        tracing.shutdown()


class LeafServer(ServerWithParts):
    """A ``grpc.aio.Server`` whose ``stop`` also stops the leaf's threads and endpoints."""

    def __init__(
        self,
        inner: grpc.aio.Server,
        runtime: _Runtime,
        health_servicer: health.aio.HealthServicer,
        repository: Repository,
    ) -> None:
        super().__init__(inner)
        self._runtime = runtime
        self._health = health_servicer
        self.repository = repository
        self._stopped = False

    async def start(self) -> None:
        await self._inner.start()
        for service in ("", SERVICE_NAME):
            await self._health.set(service, _SERVING)

    async def stop(self, grace: float | None) -> None:
        if not self._stopped:
            self._stopped = True
            await self._health.enter_graceful_shutdown()
        await self._inner.stop(grace)
        # Joining threads blocks: do it off the loop, in a named thread.
        with ThreadPoolExecutor(1, thread_name_prefix="leaf-shutdown") as pool:
            await asyncio.get_running_loop().run_in_executor(pool, self._runtime.close)



def create_server(
    config: LeafConfig, *, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
) -> tuple[LeafServer, int]:
    """Load the models, bind ``config.host:config.port`` and return ``(server, port)``.
    ``interceptors`` wrap every call (the harness installs fault injection and recording).

    Call from the event loop that will run the server; then ``await server.start()``.
    """
    configure_threads(config.torch_threads)
    tracing.configure(config.tracing, "rootleaf-leaf")
    placement = Placement(resolve_device(config.device))
    runtime = _Runtime()
    try:
        repository = Repository(config, placement)
        runtime.repository = repository
        repository.load()
        repository.start()
        runtime.batcher = Batcher(
            placement,
            BatchPolicy(
                config.max_batch_candidates,
                config.max_queue_delay_ms / 1000.0,
                config.max_queue_requests,
            ),
        )
        runtime.decode_executor = ThreadPoolExecutor(2, thread_name_prefix="leaf-decode")
        inflight = InflightBytes(config.max_inflight_bytes)  # one bound for every protocol
        servicer = LeafServicer(
            repository,
            runtime.batcher,
            inflight=inflight,
            limits=config.decode_limits,
            decode_executor=runtime.decode_executor,
            max_models=config.max_models,
        )
        oip = LeafOipServicer(repository, runtime.batcher, inflight=inflight, limits=config.decode_limits)
        built = build_server(
            listen=f"{config.host}:{config.port}",
            tls=config.tls,
            services=(SERVICE_NAME, OIP_SERVICE_NAME),
            metrics_port=config.metrics_port,
            metrics_host=config.metrics_host,
            interceptors=(*tracing.server_interceptors(TRACED_METHODS), *interceptors),
            max_receive_message_bytes=config.receive_message_bytes,
        )
        runtime.metrics_server = built
        inner, port, health_servicer = built.server, built.port, built.health
        inner.add_generic_rpc_handlers((servicer.handler(), oip_handler(oip)))
    except BaseException:
        runtime.close()
        raise
    loaded = {name: [v.version for v in slot.versions] for name, slot in repository.slots().items()}
    log.info("leaf on %s:%d, device %s, models %s", config.host, port, placement.device, loaded)
    return LeafServer(inner, runtime, health_servicer, repository), port


def serve(
    config: LeafConfig,
    on_started: Callable[[int], None] | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> None:
    """Run a leaf until SIGTERM/SIGINT, then drain gracefully. ``on_started(port)`` is called
    once the server is serving."""
    run_until_signalled(lambda: create_server(config, interceptors=interceptors), config.grace_s, on_started)
