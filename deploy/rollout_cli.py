"""``rootleaf rollout`` and ``rootleaf rollback``: command-line front ends of deploy.rollout."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Mapping, Sequence

from deploy.package import PackageError, read_package
from deploy.fleet import FleetError, package_gaps
from deploy.plan import Plan, PlanError, load_plan
from deploy.rollout import Rollout, StateStore, rollback_state


def _emit(line: str) -> None:
    print(line, flush=True)


def rollout_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rootleaf rollout", description="staged rollout: "
                                     "canary, automated canary analysis, production; rollback on failure")
    parser.add_argument("--plan", required=True, help="rollout plan TOML")
    parser.add_argument("--package", required=True, help="root-config package (.rootcfg.tar.gz)")
    parser.add_argument("--models", required=True, help="directory <models>/<model>/<version>/ to ship from")
    parser.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    parser.add_argument("--allow-gap", action="store_true",
                        help="proceed although the package lacks versions the leaves serve (they go untrimmed "
                        "until the leaves move on; the canary analysis still judges it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        plan = load_plan(args.plan)
        package = read_package(args.package)
        rollout = Rollout(plan, package, Path(args.models), out=_emit)
        rollout.validate()
        if args.dry_run:
            _emit(f"dry run: bundle {package.name} build {package.build_id}; nothing is changed")
            try:
                _check_gap(plan, package.models, args.allow_gap)
                _emit("rollout-gap check: passed")
            except PlanError as exc:
                _emit(f"rollout-gap check: the rollout would be rejected: {exc}")
            for line in rollout.describe():
                _emit(line)
            return 0
        _check_gap(plan, package.models, args.allow_gap)
    except (PlanError, PackageError) as exc:
        print(f"rootleaf rollout: rejected before any change: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(rollout.run())


def _check_gap(plan: Plan, listed: Mapping[str, Sequence[str]], allow: bool) -> None:
    """Refuse (``PlanError``) a package that leaves a rollout gap, unless ``allow``."""
    try:
        gaps = asyncio.run(package_gaps(plan, listed))
    except FleetError as exc:
        if not allow:
            raise PlanError(f"{exc}; the rollout-gap check needs every leaf (--allow-gap skips it)") from None
        _emit(f"WARNING --allow-gap: rollout-gap check skipped: {exc}")
        return
    if not gaps:
        return
    missing = "; ".join(str(g) for g in gaps)
    if not allow:
        raise PlanError(f"rollout gap: the package does not list {len(gaps)} version(s) leaves serve: {missing}. "
                        "Rebuild it with 'rootleaf bundle build --served-from <cluster file or plan>', "
                        "or pass --allow-gap")
    _emit(f"WARNING --allow-gap: the package does not list {len(gaps)} version(s) leaves serve "
          f"(untrimmed until the leaves move on): {missing}")


def rollback_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rootleaf rollback", description="restore the state before "
                                     "the last rollout recorded in the plan's state dir")
    parser.add_argument("--plan", required=True, help="the rollout plan TOML")
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.plan)
    except PlanError as exc:
        print(f"rootleaf rollback: {exc}", file=sys.stderr)
        return 2
    store = StateStore(plan.state_dir)
    state = store.load()
    if state is not None and state.get("status") == "rolled_back":
        _emit(f"rollback: rollout {state.get('id')} is already rolled back; nothing to do")
        return 0
    _emit(f"rollback of rollout {state.get('id') if state else '-'} (status {state.get('status') if state else '-'})")
    ok = asyncio.run(rollback_state(plan, store, _emit))
    _emit("rollback COMPLETED" if ok else "rollback INCOMPLETE")
    return 0 if ok else 1
