"""Partition health as operators see it: every resolved leaf address, checked one by one.

A partition target may name many pods (``dns:///leaf-ads.ns.svc:50051`` behind a headless
Service); a health Check on that channel reaches whichever pod the balancer picks, so it
says nothing about the others. ``PartitionProber`` resolves ``dns:///`` targets to all their
addresses each round and checks each address on its own channel (plain ``host:port`` targets
are one address). The result goes to ``Root/Status``, metrics and logs, and a partition with
no serving address has its models failed UNAVAILABLE at once (``down``) instead of calling
it; it never decides the root's own readiness: a root with a partition down still serves
every other partition.
Routing among targets stays with the leaf clients. State is owned by the root's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from root import metrics
from transport.tls import PLAINTEXT, TlsConfig, aio_channel

__all__ = ["PartitionHealth", "PartitionProber", "TargetHealth", "split_target"]

log = logging.getLogger(__name__)

LEAF_SERVICE = "rootleaf.v1.Leaf"
_DNS_PREFIXES = ("dns:///", "dns:")


@dataclass(frozen=True, slots=True)
class TargetHealth:
    """One address behind a configured target."""

    target: str
    """The configured target it was resolved from."""
    address: str
    """``host:port`` checked (an IP for ``dns:///`` targets)."""
    serving: bool
    detail: str = ""
    """Why it is not serving (status code, resolution error); empty when serving."""


@dataclass(frozen=True, slots=True)
class PartitionHealth:
    """The last health round of one partition."""

    name: str
    targets: tuple[TargetHealth, ...]

    @property
    def serving(self) -> int:
        return sum(t.serving for t in self.targets)


def split_target(target: str) -> tuple[bool, str, str]:
    """``(resolve, host, port)`` of a gRPC target: ``dns:///h:p`` (resolve every address of
    ``h``) or ``h:p`` (one address)."""
    resolve = target.startswith(_DNS_PREFIXES)
    rest = target
    if target.startswith("dns:///"):
        rest = target[len("dns:///"):]
    elif target.startswith("dns://"):
        rest = target[len("dns://"):].split("/", 1)[-1]  # dns://authority/host:port
    elif target.startswith("dns:"):
        rest = target[len("dns:"):]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"target {target!r} is not [dns:///]host:port")
    return resolve, host.strip("[]"), port


Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> IP addresses``; raises ``OSError`` when the name does not resolve."""


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver returns for ``host`` (what gRPC's dns resolver sees)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _address(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PartitionProber:
    """Health-checks every address of every partition target; see the module docstring."""

    def __init__(
        self,
        partitions: Mapping[str, Sequence[str]],
        tls: TlsConfig = PLAINTEXT,
        resolve: Resolver | None = None,
    ) -> None:
        self._partitions = {name: tuple(targets) for name, targets in partitions.items()}
        self._tls = tls
        self._resolve_host = resolve or system_resolve
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self.last: dict[str, PartitionHealth] = {}
        """The last round per partition (empty until the first)."""

    def down(self, name: str) -> bool:
        """Whether the last round found no serving address for partition ``name`` (False
        before the first round)."""
        part = self.last.get(name)
        return part is not None and part.serving == 0

    async def _resolve(self, target: str) -> tuple[list[tuple[str, str]], str]:
        """``[(address, server_name), ...]`` and an error text when resolution failed."""
        resolve, host, port = split_target(target)
        if not resolve:
            return [(_address(host, port), "")], ""
        try:
            hosts = await self._resolve_host(host, int(port))
        except OSError as exc:
            return [], f"cannot resolve {host}: {exc}"
        return [(_address(h, port), host) for h in sorted(set(hosts))], ""

    def _channel(self, address: str, server_name: str) -> grpc.aio.Channel:
        key = (address, server_name)
        channel = self._channels.get(key)
        if channel is None:
            options: list[tuple[str, object]] = []
            if self._tls.enabled and server_name and not self._tls.server_name:
                # Checked by IP: verify the certificate against the name the target used.
                options.append(("grpc.ssl_target_name_override", server_name))
            channel = self._channels[key] = aio_channel(address, self._tls, options)
        return channel

    async def _check(self, target: str, address: str, server_name: str, timeout_s: float) -> TargetHealth:
        stub = health_pb2_grpc.HealthStub(self._channel(address, server_name))
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=LEAF_SERVICE), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            return TargetHealth(target, address, False, exc.code().name)
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        return TargetHealth(target, address, serving, "" if serving else health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def _partition(self, name: str, timeout_s: float) -> PartitionHealth:
        targets = self._partitions[name]
        resolved = await asyncio.gather(*(self._resolve(t) for t in targets))
        checks = []
        failed: list[TargetHealth] = []
        for target, (addresses, error) in zip(targets, resolved):
            if error or not addresses:
                failed.append(TargetHealth(target, "", False, error or "resolved to no address"))
            checks += [self._check(target, a, server_name, timeout_s) for a, server_name in addresses]
        checked = await asyncio.gather(*checks)
        return PartitionHealth(name, (*checked, *failed))

    async def check(self, timeout_s: float) -> dict[str, PartitionHealth]:
        """One round over every partition: check, report (metrics, logs), remember."""
        rounds = await asyncio.gather(*(self._partition(n, timeout_s) for n in self._partitions))
        now = {p.name: p for p in rounds}
        await self._close_unused(now)
        for part in rounds:
            metrics.PARTITION_TARGETS.labels(part.name).set(len(part.targets))
            metrics.PARTITION_SERVING_TARGETS.labels(part.name).set(part.serving)
            before = self.last.get(part.name)
            if before is None or before.serving != part.serving or len(before.targets) != len(part.targets):
                down = [f"{t.address or t.target} ({t.detail})" for t in part.targets if not t.serving]
                level = logging.ERROR if part.serving == 0 else logging.WARNING if down else logging.INFO
                log.log(level, "partition %s: %d of %d leaf addresses serving%s", part.name, part.serving,
                        len(part.targets), f"; not serving: {', '.join(down)}" if down else "")
        self.last = now
        return now

    async def _close_unused(self, now: Mapping[str, PartitionHealth]) -> None:
        used = {t.address for p in now.values() for t in p.targets}
        stale = [key for key in self._channels if key[0] not in used]
        await asyncio.gather(*(self._channels.pop(key).close() for key in stale))

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(ch.close() for ch in channels))
