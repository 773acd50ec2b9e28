"""``rootleaf bench [cluster|codec|trimmer|leaf|hedge|hostile|scale] ...``: one entry point for every benchmark."""

from __future__ import annotations

import importlib
import sys

TARGETS: dict[str, str] = {
    "cluster": "benchmarks.cluster",
    "codec": "benchmarks.codec",
    "trimmer": "benchmarks.trimmer",
    "leaf": "benchmarks.leaf",
    "hedge": "benchmarks.hedging",
    "hostile": "benchmarks.hostile",
    "scale": "benchmarks.scale",
}
DEFAULT_TARGET = "cluster"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    target = DEFAULT_TARGET
    if args and args[0] in TARGETS:
        target, args = args[0], args[1:]
    elif args and args[0] in ("-h", "--help") and len(args) == 1:
        print("usage: rootleaf bench [" + "|".join(TARGETS) + "] [ARGS...]  (default: cluster)")
        return 0
    module = importlib.import_module(TARGETS[target])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
