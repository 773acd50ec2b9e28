"""Demo assets for a workload: catalog, local feature store, exported models, bundle files.

Everything lands in ``<dir>/assets`` and is cached by the workload's content hash: a second
call with the same workload returns at once, a changed workload regenerates. Generation
writes into a temporary sibling directory and renames it into place, so an interrupted run
never leaves a half-built cache. torch is imported only when models must be built. Runs on
the caller's thread; no shared state.

Layout::

    assets/ASSETS.json                      hash, workload name, per-partition models
    assets/workload.toml                    the workload file the assets came from
    assets/catalog.json                     root.catalog.FeatureCatalog
    assets/store/                           harness.datagen local store (users, items)
    assets/models/<model>/<version>/        model.pt + module_info.json (leaf repository)
    assets/bundles/<partition>/module_info.json   bundle-level allowlists (one bundle per partition)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from harness.workload import Workload, load_workload

log = logging.getLogger("rootleaf.harness.demo_assets")

ASSETS_DIR = "assets"
STAMP_FILE = "ASSETS.json"


@dataclass(frozen=True, slots=True)
class DemoAssets:
    """Paths of a generated (or reused) asset set."""

    root: Path
    """The ``assets`` directory."""
    workload: Workload
    workload_hash: str
    catalog: Path
    store: Path
    models_dir: Path
    bundles: Mapping[str, Path]
    """Partition (= bundle name) -> its bundle-level ``module_info.json``."""
    partitions: Mapping[str, tuple[str, ...]]
    """Partition -> the models it hosts."""
    reused: bool
    """True when the cache was valid and nothing was generated."""


def _assets_of(root: Path, workload: Workload, digest: str, reused: bool) -> DemoAssets:
    partitions = {p: tuple(models) for p, models in workload.partitions().items()}
    return DemoAssets(
        root=root,
        workload=workload,
        workload_hash=digest,
        catalog=root / "catalog.json",
        store=root / "store",
        models_dir=root / "models",
        bundles={p: root / "bundles" / p / "module_info.json" for p in partitions},
        partitions=partitions,
        reused=reused,
    )


def _cached_hash(root: Path) -> str | None:
    try:
        stamp = json.loads((root / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = stamp.get("workload_hash") if isinstance(stamp, dict) else None
    return value if isinstance(value, str) else None


def export_models(workload: Workload, models_dir: Path) -> None:
    """Export every version of every model of ``workload`` into ``models_dir`` (a leaf repository)."""
    import torch

    from harness.demo_model import build_demo_model
    from leaf.export import export_model

    torch.manual_seed(workload.info.seed)
    catalog = workload.catalog()
    for model in workload.models:
        widths = workload.input_widths(model.name)
        # Two candidates of each input as the root sends them: the signature then declares
        # every input's dtype and per-candidate shape.
        examples = {
            name: torch.zeros((2, *catalog[name].shape), dtype=getattr(torch, catalog[name].dtype)) for name in widths
        }
        for version in model.versions:
            module = build_demo_model(widths, model.hidden, model.outputs, workload.model_seed(model.name, version))
            export_model(module, models_dir / model.name / version, list(widths), list(model.outputs),
                         example_inputs=examples)


def write_bundles(workload: Workload, models_dir: Path, bundles_dir: Path) -> dict[str, Path]:
    """One bundle per partition, built from the exported signatures by ``deploy.bundle``."""
    from deploy.bundle import build_bundle

    out: dict[str, Path] = {}
    for partition, models in workload.partitions().items():
        result = build_bundle(partition, models_dir, bundles_dir / partition, models=models)
        out[partition] = result.bundle_file
    return out


def generate(workload: Workload, target: Path, workload_text: str, digest: str) -> None:
    """Generate every asset of ``workload`` into the empty directory ``target``."""
    from harness.datagen import generate_local_store

    target.mkdir(parents=True)
    (target / "workload.toml").write_text(workload_text, encoding="utf-8")
    catalog = workload.catalog()
    catalog.save(target / "catalog.json")
    started = time.perf_counter()
    generate_local_store(catalog, target / "store", workload.info.users, workload.info.items, workload.info.seed)
    log.info("feature store generated in %.1f s", time.perf_counter() - started)
    started = time.perf_counter()
    export_models(workload, target / "models")
    log.info("%d models exported in %.1f s", len(workload.models), time.perf_counter() - started)
    write_bundles(workload, target / "models", target / "bundles")
    stamp = {
        "workload": workload.name,
        "workload_hash": digest,
        "partitions": workload.partitions(),
    }
    (target / STAMP_FILE).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def ensure_assets(workload_path: str | Path, directory: str | Path) -> DemoAssets:
    """Assets of the workload in ``<directory>/assets``: reused when the hash matches, else rebuilt."""
    workload_path = Path(workload_path)
    workload = load_workload(workload_path)
    digest = workload.content_hash()
    directory = Path(directory).resolve()
    root = directory / ASSETS_DIR
    if _cached_hash(root) == digest:
        return _assets_of(root, workload, digest, reused=True)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{ASSETS_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    try:
        generate(workload, tmp, workload_path.read_text(encoding="utf-8"), digest)
        if root.exists():
            old = directory / f".{ASSETS_DIR}.old-{os.getpid()}"
            root.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("assets for workload %s generated in %.1f s", workload.name, time.perf_counter() - started)
    return _assets_of(root, workload, digest, reused=False)


def copy_tree(source: Path, target: Path) -> None:
    """Fresh, independent copy of ``source`` at ``target`` (real copies, not links: tests and
    rollouts may rewrite a role's files in place without touching the cache)."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)
