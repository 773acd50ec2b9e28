"""Regenerate the Python modules and .pyi stubs for the wire contract.

Run from anywhere: ``python -m protos.generate``. Output lands beside the .proto files and
is committed; ``tests/unit/test_generated_protos.py`` fails when it is stale.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "protos" / "rootleaf" / "v1"
# rootleaf's own protocol, then the Open Inference Protocol (package ``inference``).
PROTO_DIRS = (PROTO_DIR, REPO_ROOT / "protos" / "inference")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(p for d in PROTO_DIRS for p in d.glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc on every .proto, writing modules under ``out_dir`` (mirrors the repo)."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(REPO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


def generated_files(root: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for proto_dir in PROTO_DIRS:
        base = root / proto_dir.relative_to(REPO_ROOT)
        if base.is_dir():
            for p in sorted(base.iterdir()):
                if p.name.endswith(GENERATED_SUFFIXES):
                    found[str(p.relative_to(root))] = p.read_bytes()
    return found


def check() -> list[str]:
    """Names of generated files that differ from a fresh generation (empty = up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = generated_files(Path(tmp))
    committed = generated_files(REPO_ROOT)
    return sorted(
        name
        for name in set(fresh) | set(committed)
        if fresh.get(name) != committed.get(name)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed code is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = check()
        if stale:
            print("stale generated files: " + ", ".join(stale), file=sys.stderr)
            return 1
        print("generated protos are up to date")
        return 0
    generate(REPO_ROOT)
    print(f"generated {len(generated_files(REPO_ROOT))} files in {', '.join(map(str, PROTO_DIRS))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
