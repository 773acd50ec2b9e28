"""Production in waves: which hosts each wave takes, and the gate judged after each wave.

A wave's gate bakes (the wave serves for ``bake_s``), re-checks that every host delivered so
far still reports the delivery (the caller's ``recheck``: Root/Status, Leaf/ListModels),
sends ``probe_requests`` score requests through every production root delivered so far, and
reads the error counters the roots and leaves of those waves exported over the bake. Any
error rate above ``max_error_rate`` fails the gate; the rollout then reverts every wave.
Runs on the rollout's event loop; scrapes run in threads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Awaitable, Callable, Sequence

import grpc

from deploy.canary import make_requests
from deploy.fleet_config import WavesConfig
from deploy.metrics_scrape import ScrapeError, Snapshot, delta, merge, scrape
from deploy.plan import LeafTarget, Plan, PlanError, RootTarget
from protos.rootleaf.v1 import root_pb2_grpc
from transport.server import GRPC_OPTIONS
from transport.tls import aio_channel


class GateFailed(RuntimeError):
    """A wave's gate saw the hosts unhealthy or an error rate above the limit."""


@dataclass(frozen=True, slots=True)
class Wave:
    """The production hosts one wave delivers to."""

    number: int
    of: int
    roots: tuple[RootTarget, ...]
    leaves: tuple[LeafTarget, ...]

    @property
    def label(self) -> str:
        return f"wave {self.number}/{self.of}"


def _split(items: Sequence[object], sizes: Sequence[int]) -> list[list[object]]:
    out, start = [], 0
    for size in sizes:
        out.append(list(items[start:start + size]))
        start += size
    out.append(list(items[start:]))
    return out


def plan_waves(plan: Plan) -> list[Wave]:
    """The production waves (one wave, everything, without ``[waves]``). Empty waves are
    dropped; with Kubernetes delivery, hosts that share one object (a namespace's bundle
    ConfigMap, a partition's model store subPath) must fall in the same wave."""
    roots, leaves = plan.production.roots, plan.production.leaves
    if plan.waves is None:
        return [Wave(1, 1, roots, leaves)]
    groups = [(r, lf) for r, lf in zip(_split(roots, plan.waves.roots), _split(leaves, plan.waves.leaves)) if r or lf]
    if plan.delivery.kubernetes:
        owner: dict[tuple[str, ...], int] = {}
        for i, (rs, ls) in enumerate(groups):
            keys: list[tuple[str, ...]] = [("root", r.namespace) for r in rs if isinstance(r, RootTarget)]
            keys += [("leaf", lf.namespace, lf.partition) for lf in ls if isinstance(lf, LeafTarget)]
            for key in keys:
                if owner.setdefault(key, i) != i:
                    raise PlanError(f"waves: {' '.join(key)} is one Kubernetes object shared by waves "
                                    f"{owner[key] + 1} and {i + 1}; give each wave its own namespace or partition")
    return [Wave(i + 1, len(groups), tuple(r for r in rs if isinstance(r, RootTarget)),
                 tuple(lf for lf in ls if isinstance(lf, LeafTarget)))
            for i, (rs, ls) in enumerate(groups)]


def metrics_urls(roots: Sequence[RootTarget], leaves: Sequence[LeafTarget]) -> tuple[list[str], list[str]]:
    return [r.metrics_url for r in roots if r.metrics_url], [lf.metrics_url for lf in leaves if lf.metrics_url]


async def scrape_all(urls: Sequence[str]) -> Snapshot:
    try:
        return merge(await asyncio.gather(*(asyncio.to_thread(scrape, u) for u in urls)))
    except ScrapeError as exc:
        raise GateFailed(f"cannot scrape metrics ({exc})") from None


async def _probe(plan: Plan, root: RootTarget, models: Sequence[str], cfg: WavesConfig) -> tuple[int, int]:
    """(results, failed results) of ``cfg.probe_requests`` score requests through ``root``."""
    requests = make_requests(replace(plan.analysis, requests=cfg.probe_requests, seed=plan.analysis.seed + 7), models)
    results = errors = 0
    async with aio_channel(root.target, plan.tls, list(GRPC_OPTIONS)) as channel:
        stub = root_pb2_grpc.RootStub(channel)
        for request in requests:
            try:
                reply = await stub.Score(request, timeout=cfg.request_timeout_s)
            except grpc.aio.AioRpcError:
                results, errors = results + len(request.models), errors + len(request.models)
                continue
            results += len(reply.results)
            errors += sum(1 for r in reply.results if r.error_code != 0 or not r.outputs)
    return results, errors


async def gate(plan: Plan, wave: Wave, delivered: Sequence[Wave], models: Sequence[str], before: Snapshot,
               before_leaves: Snapshot, recheck: Callable[[], Awaitable[None]]) -> str:
    """Bake, then judge every wave delivered so far; raises ``GateFailed``."""
    cfg = plan.waves or WavesConfig(roots=(0,), leaves=(0,), bake_s=0.0)
    await asyncio.sleep(cfg.bake_s)
    await recheck()
    roots = [r for w in delivered for r in w.roots]
    leaves = [lf for w in delivered for lf in w.leaves]
    probes = await asyncio.gather(*(_probe(plan, r, models, cfg) for r in roots)) if cfg.probe_requests else []
    p_total, p_errors = sum(p[0] for p in probes), sum(p[1] for p in probes)
    root_urls, leaf_urls = metrics_urls(roots, leaves)
    window = delta(before, await scrape_all(root_urls))
    leaf_window = delta(before_leaves, await scrape_all(leaf_urls))
    r_total = window.total("rootleaf_root_model_results_total")
    r_errors = r_total - window.total("rootleaf_root_model_results_total", code="OK")
    l_total = leaf_window.total("rootleaf_leaf_requests_total")
    l_errors = l_total - leaf_window.total("rootleaf_leaf_requests_total", code="OK")
    codes = {c: n for c, n in window.by_label("rootleaf_root_model_results_total", "code").items() if c != "OK" and n}
    codes.update({f"leaf {c}": n for c, n in leaf_window.by_label("rootleaf_leaf_requests_total", "code").items()
                  if c != "OK" and n})
    detail = (f"bake {cfg.bake_s:g} s; probes {p_errors:.0f}/{p_total:.0f} failed; root results "
              f"{r_errors:.0f}/{r_total:.0f} failed; leaf requests {l_errors:.0f}/{l_total:.0f} failed"
              + (f" ({', '.join(f'{c} {n:.0f}' for c, n in sorted(codes.items()))})" if codes else ""))
    worst = max((e / t for e, t in ((p_errors, p_total), (r_errors, r_total), (l_errors, l_total)) if t), default=0.0)
    if worst > cfg.max_error_rate:
        raise GateFailed(f"gate after {wave.label}: error rate {worst:.3f} > max_error_rate {cfg.max_error_rate} ({detail})")
    return detail


async def baseline(delivered: Sequence[Wave]) -> tuple[Snapshot, Snapshot]:
    """Counters of the roots and leaves of ``delivered`` before a wave goes out."""
    root_urls, leaf_urls = metrics_urls([r for w in delivered for r in w.roots], [lf for w in delivered for lf in w.leaves])
    return await scrape_all(root_urls), await scrape_all(leaf_urls)
