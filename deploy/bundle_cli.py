"""``rootleaf bundle build``: command-line front end of ``deploy.bundle.build_bundle``."""

from __future__ import annotations

import argparse
import logging
import sys

from deploy.bundle import BundleError, build_bundle
from deploy.package import PackageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rootleaf bundle", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="build module_info.json and a root-config package")
    build.add_argument("--name", required=True, help="bundle name (e.g. ads)")
    build.add_argument("--repo", required=True, help="model repository <repo>/<model>/<version>/")
    build.add_argument("--models", default="", help="comma-separated models (default: all)")
    build.add_argument(
        "--include-deployed",
        metavar="FILE",
        help="currently deployed bundle file: its newest --keep-deployed versions are kept",
    )
    build.add_argument(
        "--served-from",
        metavar="FILE",
        help="cluster file (cluster.json) or rollout plan (TOML): keep every version its leaves "
        "serve (Leaf/ListModels), signatures from the bundle its roots load (no rollout gap)",
    )
    build.add_argument(
        "--keep-deployed",
        type=int,
        metavar="K",
        help="also keep the newest K deployed versions of each model (default: 2 without "
        "--served-from, none beyond the served ones with it); the rest are dropped",
    )
    build.add_argument(
        "--strict-signatures",
        action="store_true",
        help="fail when the versions of a model do not all share one signature",
    )
    build.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="another root config file to ship in the package (repeatable)",
    )
    build.add_argument("--out", required=True, help="output directory")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    models = [m.strip() for m in args.models.split(",") if m.strip()] or None
    try:
        result = build_bundle(
            args.name,
            args.repo,
            args.out,
            models=models,
            include_deployed=args.include_deployed,
            served_from=args.served_from,
            keep_deployed=args.keep_deployed,
            strict_signatures=args.strict_signatures,
            extra_configs=args.config,
        )
    except (BundleError, PackageError) as exc:
        print(f"rootleaf bundle build: error: {exc}", file=sys.stderr)
        return 1
    print(f"bundle {result.name}: build {result.package.build_id}")
    for model, versions in result.models.items():
        print(f"  {model}: versions {', '.join(versions)}")
    for model, versions in result.dropped.items():
        print(f"  dropped: {model} versions {', '.join(versions)} (deployed, no longer served)")
    for line in result.signature_changes:
        print(f"  signature differs: {line}")
    for line in result.skipped:
        print(f"  skipped: {line}")
    print(f"bundle file: {result.bundle_file}")
    print(f"package:     {result.package.path}  (sha256 {result.package.sha256})")
    return 0
