"""``python -m root.wire_report``: root->leaf bytes per partition and root CPU per request,
for trim on/off x LZ4 on/off (and the no-dedup baseline), on a generated ads-like workload.

The root's real request path (``ScoreEngine``: cache, local store, encode once, trim,
assemble) runs in this process; leaves are replaced by a client that returns a fixed
response without parsing, so the CPU figure is the root's own work up to handing bytes to
gRPC (gRPC's send path is not included; ``rootleaf bench`` measures whole processes).
Single-threaded asyncio loop plus one encode thread.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Container, Sequence

import numpy as np
from prometheus_client import REGISTRY

from wire.codec import encode
from protos.rootleaf.v1 import leaf_pb2
from root.cache import CachedFeatureStore
from root.catalog import Entity, FeatureCatalog, FeatureSpec
from root.config import CacheConfig, FeatureStoreConfig, PartitionConfig, RootConfig
from root.datagen import generate_local_store
from root.local_store import LocalFeatureStore
from root.scoring import ModelRef, ScoreEngine, ScoreInput

R, C = Entity.REQUEST, Entity.CANDIDATE


def ads_catalog() -> FeatureCatalog:
    """40 request features and 600 candidate features shaped like ads ranking."""
    specs = []
    kinds = ("scalar", "ratio", "counter")
    specs += [FeatureSpec(f"u_s{i}", R, "float32", (), kind=kinds[i % 3]) for i in range(32)]
    specs += [FeatureSpec(f"u_emb{i}", R, "float32", (d,), kind="embedding") for i, d in enumerate((64, 64, 128, 128, 256, 256))]
    specs += [FeatureSpec(f"u_hist{i}", R, "int64", (500,), kind="ids") for i in range(2)]
    specs += [
        FeatureSpec(f"c_s{i}", C, "float32", (), kind=("ratio", "counter")[i % 2], zero_fraction=0.5 + 0.4 * (i % 5) / 4)
        for i in range(450)
    ]
    specs += [FeatureSpec(f"c_v{i}", C, "float32", (4 + 4 * (i % 2),), kind="scalar", zero_fraction=0.3) for i in range(60)]
    specs += [
        FeatureSpec(f"c_emb{i}", C, ("float16", "float32")[i % 2], (32 * (1 + i % 4),), kind="embedding") for i in range(50)
    ]
    specs += [FeatureSpec(f"c_ids{i}", C, "int32", (16 + 16 * (i % 2),), kind="ids", zero_fraction=0.4) for i in range(40)]
    return FeatureCatalog.of(specs)


def ads_models(catalog: FeatureCatalog, seed: int) -> dict[str, tuple[str, frozenset[str]]]:
    """8 models on 3 partitions, each reading 10-30% of the candidate features."""
    rng = np.random.default_rng(seed)
    cand = np.array(catalog.names(C))
    req = np.array(catalog.names(R))
    models: dict[str, tuple[str, frozenset[str]]] = {}
    prod = set(rng.choice(cand, int(0.25 * len(cand)), replace=False)) | set(rng.choice(req, 20, replace=False))
    models["ads_ctr"] = ("ads", frozenset(prod))
    for j, name in enumerate(("ads_ctr_exp1", "ads_ctr_exp2")):
        variant = set(prod)
        drop = rng.choice(sorted(variant), 10, replace=False)
        variant -= set(drop)
        variant |= set(rng.choice(cand, 15 + 5 * j, replace=False))
        models[name] = ("ads", frozenset(variant))
    for name, part, share in (("cvr_a", "conv", 0.2), ("cvr_b", "conv", 0.15), ("eng_like", "eng", 0.1), ("eng_share", "eng", 0.12), ("eng_dwell", "eng", 0.3)):
        chosen = set(rng.choice(cand, int(share * len(cand)), replace=False)) | set(rng.choice(req, 10, replace=False))
        models[name] = (part, frozenset(chosen))
    return models


@dataclass(frozen=True, slots=True)
class StaticAllowlists:
    """Fixed allowlists (the trimmer's lookup contract, without files)."""

    allow: dict[str, frozenset[str]]

    def lookup(
        self, model: str, version: str | None = None, servable: Container[str] | None = None
    ) -> "StaticDecision":
        features = self.allow.get(model)
        if features is None:
            return StaticDecision(None, None, "untrimmed")
        return StaticDecision(features, NullLeaf.VERSION, "exact")


@dataclass(frozen=True, slots=True)
class StaticDecision:
    features: frozenset[str] | None
    version: str | None
    kind: str


class NullLeaf:
    """A partition that answers at once with fixed scores, without parsing the request."""

    VERSION = "1"

    def __init__(self, n: int, models: int) -> None:
        self.response = leaf_pb2.LeafResponse(
            model="m", version=self.VERSION, outputs=[encode("score", np.full(n, 0.5, np.float32))]
        )
        reply = leaf_pb2.ModelReply(model="m", version=self.VERSION, outputs=self.response.outputs)
        self.partition_response = leaf_pb2.PartitionResponse(models=[reply] * models)

    async def score(
        self, payload: bytes, timeout_s: float, model: str = "", version: str = ""
    ) -> leaf_pb2.LeafResponse:
        return self.response

    def served_versions(self, model: str) -> frozenset[str]:
        return frozenset({self.VERSION})

    async def score_partition(
        self, payload: bytes, timeout_s: float, models: Sequence[tuple[str, str]] = ()
    ) -> leaf_pb2.PartitionResponse:
        return self.partition_response

    async def check_ready(self, timeout_s: float) -> int:
        return 1

    async def refresh_versions(self, timeout_s: float) -> None:
        return None

    async def close(self) -> None:
        return None


def _bytes(partitions: Sequence[str]) -> dict[tuple[str, str], float]:
    return {
        (p, s): REGISTRY.get_sample_value("rootleaf_root_partition_bytes_total", {"partition": p, "stage": s}) or 0.0
        for p in partitions
        for s in ("untrimmed", "trimmed", "wire")
    }


async def _run_mode(
    config: RootConfig, catalog: FeatureCatalog, store: LocalFeatureStore, models: dict[str, tuple[str, frozenset[str]]],
    n: int, requests: int, users: int, items: int, seed: int,
) -> tuple[dict[tuple[str, str], float], float]:
    cache = CachedFeatureStore(store, catalog, max_bytes=config.cache.max_bytes, ttl_s=config.cache.ttl_s)
    leaves = {p: NullLeaf(n, len(config.partitions[p].models)) for p in config.partitions}
    with ThreadPoolExecutor(1, thread_name_prefix="root-encode") as pool:
        engine = ScoreEngine(config, catalog, cache, StaticAllowlists({m: a for m, (_, a) in models.items()}), leaves, pool)
        rng = np.random.default_rng(seed)
        refs = tuple(ModelRef(m) for m in models)

        def make() -> ScoreInput:
            return ScoreInput("r", int(rng.integers(users)), rng.choice(items, n, replace=False).astype(np.uint64), refs)

        for _ in range(max(5, requests // 4)):  # warm the cache and allocator
            await engine.score(make(), 10.0)
        before = _bytes(list(config.partitions))
        inputs = [make() for _ in range(requests)]
        cpu = time.process_time()
        for inp in inputs:
            await engine.score(inp, 10.0)
        cpu_ms = (time.process_time() - cpu) * 1000.0 / requests
        after = _bytes(list(config.partitions))
    return {k: (after[k] - before[k]) / requests for k in after}, cpu_ms


def _width(partition: str) -> int:
    return max(14, len(partition) + 10)


def report(
    catalog: FeatureCatalog,
    models: dict[str, tuple[str, frozenset[str]]],
    directory: Path,
    *,
    candidates: int,
    requests: int,
    users: int,
    items: int,
    seed: int,
) -> None:
    """Print bytes per partition and root CPU per request for each mode (store in ``directory``)."""
    partitions = sorted({part for part, _ in models.values()})
    if not (directory / "store.json").exists():
        generate_local_store(catalog, directory, users, items, seed)
    store = LocalFeatureStore(directory, catalog)
    base = RootConfig(
        catalog=directory / "catalog.json",
        partitions={
            part: PartitionConfig(part, ("in-process",), tuple(m for m, (pp, _) in models.items() if pp == part))
            for part in partitions
        },
        feature_store=FeatureStoreConfig(path=directory),
        cache=CacheConfig(max_bytes=1 << 30, ttl_s=3600),
        max_candidates=max(4096, candidates),
    )
    req_bytes = sum(catalog[n].row_bytes for n in catalog.names(R))
    cand_bytes = sum(catalog[n].row_bytes for n in catalog.names(C))
    cand_names = set(catalog.names(C))
    share = {m: len(a & cand_names) / len(cand_names) for m, (_, a) in models.items()}
    print(
        f"workload: {len(catalog.names(R))} request features ({req_bytes} B/user), "
        f"{len(cand_names)} candidate features ({cand_bytes} B/item), {candidates} candidates, "
        f"{len(models)} models on {len(partitions)} partitions, candidate-feature share per model "
        f"{min(share.values()):.0%}-{max(share.values()):.0%}"
    )
    print(
        f"{'mode':<31}"
        + "".join(f"{part + ' wire KB':>{_width(part)}}" for part in partitions)
        + f"{'total KB':>11}{'raw KB':>10}{'root CPU ms':>13}"
    )
    modes: list[tuple[str, dict[str, Any]]] = [
        ("trim+lz4, partition calls", dict(trim=True, compression="lz4", partition_calls=True)),
        ("no trim, lz4, partition calls", dict(trim=False, compression="lz4", partition_calls=True)),
        ("trim+lz4", dict(trim=True, compression="lz4")),
        ("trim, no lz4", dict(trim=True, compression="none")),
        ("no trim, lz4", dict(trim=False, compression="lz4")),
        ("no trim, no lz4", dict(trim=False, compression="none")),
        ("no trim, no lz4, no dedup", dict(trim=False, compression="none", dedup_request_features=False)),
    ]
    for label, switches in modes:
        config = replace(base, **{"partition_calls": False, **switches})
        per_req, cpu_ms = asyncio.run(
            _run_mode(config, catalog, store, models, candidates, requests, users, items, seed)
        )
        wire = [per_req[(part, "wire")] / 1024 for part in partitions]
        raw = sum(per_req[(part, "trimmed")] for part in partitions) / 1024
        print(f"{label:<31}" + "".join(f"{w:>{_width(part)}.1f}" for w, part in zip(wire, partitions)) + f"{sum(wire):>11.1f}{raw:>10.1f}{cpu_ms:>13.2f}")
    asyncio.run(store.close())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m root.wire_report", description="Root->leaf bytes and root CPU by mode.")
    p.add_argument("--candidates", type=int, default=256)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--items", type=int, default=3000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--dir", type=Path, default=None, help="store directory, reused when present (default: temporary)")
    args = p.parse_args(argv)
    catalog = ads_catalog()
    models = ads_models(catalog, args.seed)
    with tempfile.TemporaryDirectory(prefix="rootleaf-wire-") as tmp:
        report(
            catalog, models, args.dir or Path(tmp),
            candidates=args.candidates, requests=args.requests, users=args.users, items=args.items, seed=args.seed,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
