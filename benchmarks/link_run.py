"""Inside the private network namespace ``benchmarks.link`` re-executes into: shape the
loopback, then run the cluster benchmark over it, which reports the link from ``LINK_ENV``
(``python -m benchmarks.link_run GBPS DELAY_US BENCH_ARGS...``)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

from benchmarks.cluster import main as cluster_main
from benchmarks.link import LINK_ENV, shape_loopback


def main(argv: list[str]) -> int:
    """``GBPS DELAY_US BENCH_ARGS...``: shape ``lo``, then the cluster benchmark."""
    gbps, delay_us, rest = float(argv[0]), float(argv[1]), argv[2:]
    info = shape_loopback(gbps, delay_us)
    print(f"link: {info.description}", file=sys.stderr)
    os.environ[LINK_ENV] = json.dumps(asdict(info))
    return cluster_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
