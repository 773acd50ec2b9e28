"""``rootleaf`` console script: dispatches a subcommand to the module that owns it.

Each subcommand is a ``module:function`` taking the remaining argv and returning an exit
code; the module owns its own argparse parser. Imports are lazy so ``rootleaf leaf`` never
imports the root and vice versa.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable

from transport.parent_death import die_with_parent_from_env

COMMANDS: dict[str, tuple[str, str]] = {
    "root": ("root.cli:main", "run a root server"),
    "score": ("root.client_cli:main", "score candidates through a root and print a table"),
    "features": ("harness.features_cli:main", "load workload features into a feature store"),
    "health": ("transport.health_cli:main", "gRPC health check of a root or leaf (exit 0 = SERVING)"),
    "leaf": ("leaf.cli:main", "run a leaf partition server"),
    "harness-leaf": ("harness.leaf_process:main", "a leaf with fault injection and request recording (tests, soak)"),
    "model": ("leaf.export_cli:main", "export a TorchScript model with its signature"),
    "demo-model": ("harness.demo_model:main", "build and export a deterministic demo MLP"),
    "bundle": ("deploy.bundle_cli:main", "build a bundle-level module_info.json and root-config package"),
    "rollout": ("deploy.rollout_cli:rollout_main", "staged rollout: canary, analysis, production"),
    "rollback": ("deploy.rollout_cli:rollback_main", "restore the state before the last rollout"),
    "model-store": ("deploy.model_store_cli:main", "add or remove a model version (what rollout Jobs run)"),
    "up": ("harness.cluster_cli:up_main", "start a local cluster (leaves + root) on loopback"),
    "down": ("harness.cluster_cli:down_main", "stop a local cluster started with 'up'"),
    "monitor": ("harness.monitor:main", "run Prometheus with the shipped rules on a local cluster"),
    "demo": ("benchmarks.demo:main", "the main job: local cluster, load, what trimming saved"),
    "bench": ("benchmarks.cli:main", "benchmarks: cluster (default), codec, trimmer, leaf, hedge, hostile, scale"),
    "soak": ("harness.soak:main", "run the cluster under load with injected faults"),
    "image": ("deploy.image:main", "build the container image from this checkout (docs/image.md)"),
}


def _load(spec: str) -> Callable[[list[str]], int]:
    module_name, func_name = spec.split(":")
    module = importlib.import_module(module_name)
    func: Callable[[list[str]], int] = getattr(module, func_name)
    return func


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rootleaf COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    die_with_parent_from_env()
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"rootleaf: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        func = _load(COMMANDS[name][0])
    except ModuleNotFoundError as exc:
        print(f"rootleaf {name}: not available ({exc})", file=sys.stderr)
        return 2
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
