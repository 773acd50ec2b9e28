"""``rootleaf features load``: write a workload's feature data into Redis or a Redis Cluster.

The data is what the local store holds for the same workload (``harness.datagen``), so a root
scores identically on either store. Either ``--workload`` (a TOML file or a shipped name:
catalog, users, items and seed come from it) or ``--catalog`` with ``--users``, ``--items``
and ``--seed``. Runs one asyncio loop in the main thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from redis.exceptions import RedisError

from root.catalog import FeatureCatalog
from root.feature_store import FeatureStoreError
from root.redis_cluster_store import CLUSTER_SCHEMES, RedisClusterFeatureStore
from harness.datagen import load_generated
from root.redis_loader import DEFAULT_BATCH_ROWS, LoadOptions
from root.redis_records import PackedRecordStore
from root.redis_store import RedisFeatureStore


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rootleaf features", description="Feature store data tools.")
    sub = p.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="generate a workload's feature data and write it into Redis")
    src = load.add_mutually_exclusive_group(required=True)
    src.add_argument("--workload", help="workload TOML file or shipped name (ci, w1)")
    src.add_argument("--catalog", help="feature catalog JSON (then --users, --items, --seed)")
    load.add_argument("--users", type=int, help="request entities (ids 0..users-1); overrides the workload")
    load.add_argument("--items", type=int, help="candidate entities (ids 0..items-1); overrides the workload")
    load.add_argument("--seed", type=int, help="data seed; overrides the workload")
    dest = load.add_mutually_exclusive_group(required=True)
    dest.add_argument("--redis", metavar="URL", help="redis://HOST:PORT/DB")
    dest.add_argument("--redis-cluster", metavar="URL",
                      help="redis-cluster://HOST:PORT[,HOST:PORT...] (startup nodes of a Redis Cluster)")
    load.add_argument("--key-prefix", default="rl", help="key namespace (the root's feature_store.key_prefix)")
    load.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS, help="records per MSET")
    load.add_argument("--flush", action="store_true", help="delete the entities' existing records first")
    load.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _source(args: argparse.Namespace) -> tuple[FeatureCatalog, int, int, int]:
    if args.workload is not None:
        from harness.workload import builtin_workload, load_workload

        workload = load_workload(builtin_workload(args.workload))
        info = workload.info
        return (
            workload.catalog(),
            info.users if args.users is None else args.users,
            info.items if args.items is None else args.items,
            info.seed if args.seed is None else args.seed,
        )
    absent = [f"--{k}" for k in ("users", "items", "seed") if getattr(args, k) is None]
    if absent:
        raise ValueError(f"--catalog needs {', '.join(absent)}")
    return FeatureCatalog.load(args.catalog), args.users, args.items, args.seed


async def _load(args: argparse.Namespace) -> int:
    catalog, users, items, seed = _source(args)
    options = LoadOptions(key_prefix=args.key_prefix, batch_rows=args.batch_rows, flush=args.flush)
    url = args.redis if args.redis is not None else args.redis_cluster
    if args.redis_cluster is not None and not url.startswith(CLUSTER_SCHEMES):
        url = f"redis-cluster://{url}"  # plain host:port,host:port also accepted
    results = await load_generated(
        url, catalog, users=users, items=items, seed=seed, options=options,
        progress=not args.quiet,
    )
    # Read back through the store: proves the layout a root will check is in place.
    store: PackedRecordStore
    if args.redis is not None:
        store = RedisFeatureStore(url, catalog, key_prefix=args.key_prefix, timeout_s=5.0)
    else:
        store = RedisClusterFeatureStore(url, catalog, key_prefix=args.key_prefix, timeout_s=5.0)
    try:
        await store.check_layout()
    finally:
        await store.close()
    for r in results:
        note = f", removed {r.deleted} old records" if r.deleted else ""
        print(
            f"{r.entity.value}: {r.records} records x {r.record_bytes} B "
            f"= {r.records * r.record_bytes / 1e6:.1f} MB, layout {r.layout_digest}{note}"
        )
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_load(args))
    except (ValueError, OSError, RedisError, FeatureStoreError) as exc:
        print(f"rootleaf features {args.command}: {exc}", file=sys.stderr)
        return 1
