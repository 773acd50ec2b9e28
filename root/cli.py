"""``rootleaf root --config FILE [--port-file PATH] [--workers N]``: run a root server.

With one worker the root serves in this process; with more, ``root.supervisor`` runs that
many root processes on one port and this process supervises them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from root.config import load_root_config
from root.server import serve
from transport.builder import write_port_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rootleaf root", description="Run a root server.")
    p.add_argument("--config", type=Path, required=True, help="root config TOML file")
    p.add_argument("--port-file", type=Path, default=None, help="write the bound gRPC port here once serving")
    p.add_argument("--workers", type=int, default=None,
                   help="server processes sharing the port (default: the config's workers; 0 = one per core, "
                        "at most 8; 1 = no supervisor)")
    # Internal: set by the supervisor when it starts a worker on the port it reserved.
    p.add_argument("--worker-listen", default=None, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
    )
    try:
        config = load_root_config(args.config)
        if args.workers is not None and args.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {args.workers}")
    except ValueError as exc:
        print(f"rootleaf root: {exc}", file=sys.stderr)
        return 2
    port_file = args.port_file
    on_started = (lambda port: write_port_file(port_file, port)) if port_file else None
    from root.supervisor import Supervisor, resolve_workers, watch_parent, worker_config

    workers = resolve_workers(config.workers if args.workers is None else args.workers)
    if args.worker_listen is not None:
        watch_parent()
        serve(worker_config(config, args.worker_listen, workers), on_started=on_started)
        return 0
    if workers == 1:
        serve(dataclasses.replace(config, workers=1), on_started=on_started)
        return 0
    supervisor = Supervisor(args.config.resolve(), config, workers, log_level=args.log_level, on_started=on_started)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
