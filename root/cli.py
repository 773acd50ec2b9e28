"""``rootleaf root --config FILE [--port-file PATH]``: run a root server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from root.config import load_root_config
from root.server import serve


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rootleaf root", description="Run a root server.")
    p.add_argument("--config", type=Path, required=True, help="root config TOML file")
    p.add_argument("--port-file", type=Path, default=None, help="write the bound gRPC port here once serving")
    p.add_argument("--log-level", default="INFO")
    return p


def _write_port(path: Path, port: int) -> None:
    # Atomic: a launcher polling the file never reads a partial number.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_root_config(args.config)
    except ValueError as exc:
        print(f"rootleaf root: {exc}", file=sys.stderr)
        return 2
    port_file = args.port_file
    serve(config, on_started=(lambda port: _write_port(port_file, port)) if port_file else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
