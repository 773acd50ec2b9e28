"""Root server assembly: build (``create_server``), serve until a signal (``serve``), drain.

``create_server`` runs on the caller's event loop thread: it applies the allocator
settings, loads the catalog, starts the trimmer (its watchdog threads), binds the port,
then opens the feature store and one gRPC channel per leaf target and returns. ``start``
reports SERVING (gRPC health, ``""`` and ``rootleaf.v1.Root``): the root is live and ready
while its process serves, whatever its partitions do; it launches the "root-health" task,
which checks every partition (each resolved leaf address) for ``Status``, metrics and logs.
Stopping the returned server reports NOT_SERVING, drains in-flight calls for the grace
period, then closes channels, store, trimmer and the "root-encode" threads, so one process
can create and close several roots.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2

from transport import tracing
from transport.builder import build_server
from transport.server import ServerWithParts, run_until_signalled, tune_allocator
from root.catalog import FeatureCatalog
from root.config import RootConfig
from root import metrics
from root.feature_store import FeatureStore, FeatureStoreError
from root.leaf_client import GrpcLeafClient, LeafClient
from root.oip import RootOipServicer
from root.partition_health import PartitionProber
from root.scoring import ScoreEngine
from root.servicer import SERVICE_NAME, RootServicer
from root.shadow import ShadowMirror
from root.stores import open_feature_store
from root.versions import pending_versions
from contract.versions import latest_version
from trimmer import FeatureTrimmer, TrimmerConfig
from wire.oip_service import OIP_SERVICE_NAME, oip_handler

__all__ = ["RootServer", "create_server", "serve"]

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 0.5
"""Partition health-check period while some partition has no serving target."""
HEALTH_INTERVAL_SERVING_S = 1.0
"""Period once every partition is reachable (each round also refreshes the versions every
leaf has loaded, so a version a leaf loads is routed to within about this long)."""
HEALTH_TIMEOUT_S = 1.0

_SERVING = health_pb2.HealthCheckResponse.SERVING
TRACED_METHODS = (f"/{SERVICE_NAME}/Score", f"/{OIP_SERVICE_NAME}/ModelInfer")


class RootServer(ServerWithParts):
    """A ``grpc.aio.Server`` whose ``start``/``stop`` also run the root's other parts."""

    def __init__(
        self,
        inner: grpc.aio.Server,
        *,
        engine: ScoreEngine,
        trimmer: FeatureTrimmer,
        store: FeatureStore,
        leaves: dict[str, LeafClient],
        executor: ThreadPoolExecutor,
        health_servicer: health.aio.HealthServicer,
        metrics_server: Any,
        prober: PartitionProber,
        shadow: ShadowMirror | None = None,
    ) -> None:
        super().__init__(inner)
        self.shadow = shadow
        self.engine = engine
        self.trimmer = trimmer
        self._store = store
        self._leaves = leaves
        self._executor = executor
        self._health = health_servicer
        self._metrics_server = metrics_server
        self.prober = prober
        self._health_task: asyncio.Task[None] | None = None
        self._stopped = False
        self._closed = False

    async def start(self) -> None:
        await self._inner.start()
        metrics.TRIM_ENABLED.set(1 if self.engine.config.trim else 0)
        await self._check_store()
        # Ready and live while the process serves: a partition without a serving leaf fails
        # its own models (Status, metrics and logs say which); every other model is served.
        for service in ("", SERVICE_NAME):
            await self._health.set(service, _SERVING)
        self._health_task = asyncio.create_task(self._watch_partitions(), name="root-health")

    async def _check_store(self) -> None:
        """Report a store that cannot answer at start-up; the root serves anyway (requests
        then fail UNAVAILABLE or get defaults, per ``feature_store.on_error``) and recovers
        by itself when the store does."""
        try:
            await self._store.check()
        except FeatureStoreError as exc:
            metrics.FEATURE_STORE_READY.set(0)
            log.error("feature store failed its start-up check: %s", exc)
        else:
            metrics.FEATURE_STORE_READY.set(1)

    async def check_partitions(self) -> bool:
        """Health-check every partition now; True when each has a serving address.

        Two views, one round: the leaf clients refresh the targets they route to, and the
        prober checks every resolved address for ``Status``, metrics and logs. Neither
        changes the root's own health."""
        _, health = await asyncio.gather(
            asyncio.gather(*(c.check_ready(HEALTH_TIMEOUT_S) for c in self._leaves.values())),
            self.prober.check(HEALTH_TIMEOUT_S),
        )
        return all(p.serving > 0 for p in health.values())

    def report_unserved_versions(self) -> None:
        """Per partition and model, how many bundle versions no leaf serves (rollout progress)."""
        bundle_versions = self.trimmer.models()
        for name, partition in self.engine.config.partitions.items():
            leaf = self._leaves[name]
            for model in partition.models:
                served = leaf.served_versions(model) or frozenset()
                unserved = pending_versions(bundle_versions.get(model, ()), served, latest_version(served))
                metrics.UNSERVED_VERSIONS.labels(name, model).set(len(unserved))

    async def _watch_partitions(self) -> None:
        while not self._stopped:
            try:
                ready = await self.check_partitions()
                self.report_unserved_versions()
            except Exception:  # a health round must never end the watcher
                log.exception("partition health check failed")
                ready = False
            await asyncio.sleep(HEALTH_INTERVAL_SERVING_S if ready else HEALTH_INTERVAL_S)

    async def stop(self, grace: float | None) -> None:
        if not self._stopped:
            self._stopped = True
            await self._health.enter_graceful_shutdown()
        await self._inner.stop(grace)
        if self._closed:
            return
        self._closed = True
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._leaves.values()), self.prober.close())
        if self.shadow is not None:
            await self.shadow.close()
        await self._store.close()
        loop = asyncio.get_running_loop()
        # Joining threads blocks: do it off the loop, in a named thread.
        with ThreadPoolExecutor(1, thread_name_prefix="root-shutdown") as pool:
            await loop.run_in_executor(pool, self._close_threads)

    def _close_threads(self) -> None:
        tracing.shutdown()
        self.trimmer.close()
        self._executor.shutdown(wait=True)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()



def create_server(config: RootConfig) -> tuple[RootServer, int]:
    """Load everything, bind ``config.listen`` and return ``(server, port)``.

    Call from the event loop that will run the server; then ``await server.start()``.
    Everything that can fail for outside reasons (catalog, bundles, TLS files, ports) runs
    before the feature store and the leaf channels are opened: their ``close`` is a
    coroutine this synchronous builder cannot await, so a failed build never opens them.
    """
    tune_allocator()
    tracing.configure(config.tracing, "rootleaf-root")  # before any channel is built
    catalog = FeatureCatalog.load(config.catalog)
    trimmer = FeatureTrimmer(
        {name: str(path) for name, path in config.bundles.items()},
        watch=True,
        config=TrimmerConfig(max_file_bytes=config.bundle_max_bytes),
        kill_switch=config.kill_switch_file,
    )
    closers: list[Callable[[], None]] = [trimmer.close]
    try:
        # The workers of one root share the port (``root.supervisor``); a single root does
        # not, so a second process on its port fails to bind instead of taking its traffic.
        built = build_server(
            listen=config.listen,
            tls=config.tls,
            services=(SERVICE_NAME, OIP_SERVICE_NAME),
            reflection_enabled=config.reflection,
            metrics_port=config.metrics_port,
            metrics_host=config.metrics_host,
            reuse_port=config.workers > 1,
            interceptors=tracing.server_interceptors(TRACED_METHODS),
            max_receive_message_bytes=config.receive_message_bytes,
        )
        closers.append(built.close_metrics)
        inner, port, health_servicer, metrics_server = built.server, built.port, built.health, built.metrics_server
        executor = ThreadPoolExecutor(2, thread_name_prefix="root-encode")
        closers.append(lambda: executor.shutdown(wait=False))
        if config.leaf_tls.enabled:
            config.leaf_tls.channel_credentials()  # reads the files: fails here, not below
        store = open_feature_store(config.feature_store, config.cache, catalog)  # opened last
    except BaseException:
        for close in closers:
            close()
        raise
    # From here on nothing reads files or binds ports; the constructors only build objects.
    leaves: dict[str, LeafClient] = {
        name: GrpcLeafClient(
            part.targets, tls=config.leaf_tls, hedging=config.hedging, name=name, timeout=config.partition_timeout
        )
        for name, part in config.partitions.items()
    }
    prober = PartitionProber({name: part.targets for name, part in config.partitions.items()}, config.leaf_tls)
    engine = ScoreEngine(config, catalog, store, trimmer, leaves, executor, partition_down=prober.down)
    shadow = ShadowMirror(config.shadow, config.leaf_tls) if config.shadow.enabled else None
    inner.add_generic_rpc_handlers(
        (
            RootServicer(engine, config, trimmer.status, lambda: prober.last, shadow).handler(),
            oip_handler(RootOipServicer(engine, config.bundles, lambda: prober.last)),
        )
    )
    log.info(
        "root on port %d (tls %s, leaf tls %s): %d features, partitions %s, trim=%s compression=%s dedup=%s",
        port,
        config.settings()["tls"],
        config.settings()["leaf_tls"],
        len(catalog),
        {n: list(p.targets) for n, p in config.partitions.items()},
        config.trim,
        config.compression,
        config.dedup_request_features,
    )
    server = RootServer(
        inner,
        engine=engine,
        trimmer=trimmer,
        store=store,
        leaves=leaves,
        executor=executor,
        health_servicer=health_servicer,
        metrics_server=metrics_server,
        prober=prober,
        shadow=shadow,
    )
    return server, port


def serve(config: RootConfig, on_started: Callable[[int], None] | None = None) -> None:
    """Run a root until SIGTERM/SIGINT, then drain gracefully. ``on_started(port)`` is called
    once the server is serving."""
    run_until_signalled(lambda: create_server(config), config.shutdown_grace_s, on_started)
