"""``rootleaf model-store``: add or remove one model version in a leaf's model repository.

What the Kubernetes delivery's Jobs run (``deploy.k8s_render.model_job``), with the model
store claim mounted at the partition's subPath. ``deliver`` copies atomically
(``deploy.delivery.deliver_version``: an identical copy is left alone, a different one is an
error); ``remove`` takes a version away only when its tree hash is the one delivered, so a
rollback never deletes a copy it did not make. Exit 0 on success, 1 on a refused change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy.delivery import Change, DeliveryError, deliver_version, revert, tree_sha256


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rootleaf model-store", description="add or remove a model version")
    parser.add_argument("action", choices=("deliver", "remove"))
    parser.add_argument("--repo", required=True, help="model repository <repo>/<model>/<version>/")
    parser.add_argument("--model", required=True)
    parser.add_argument("--sha256", required=True, help="tree hash of the version (deploy.delivery.tree_sha256)")
    parser.add_argument("--source", help="deliver: the version directory to copy")
    parser.add_argument("--version", help="remove: the version to take away")
    args = parser.parse_args(argv)
    repo = Path(args.repo)
    try:
        if args.action == "deliver":
            if not args.source:
                parser.error("deliver needs --source")
            source = Path(args.source)
            if not source.is_dir() or tree_sha256(source) != args.sha256:
                print(f"model-store: {source} is missing or its tree hash is not {args.sha256}", file=sys.stderr)
                return 1
            change = deliver_version(source, repo, args.model, f"model-store {repo}")
            print(f"model-store: {args.model}/{source.name} " + ("delivered" if change else "already there"))
            return 0
        if not args.version:
            parser.error("remove needs --version")
        target = repo / args.model / args.version
        if not target.exists():
            print(f"model-store: {args.model}/{args.version} is not there; nothing to do")
            return 0
        if tree_sha256(target) != args.sha256:
            print(f"model-store: {target} holds other content than {args.sha256}; left alone", file=sys.stderr)
            return 1
        revert(Change("version", str(target), args.sha256, None, None, f"model-store {repo}"))
        print(f"model-store: {args.model}/{args.version} removed")
        return 0
    except DeliveryError as exc:
        print(f"model-store: {exc}", file=sys.stderr)
        return 1
