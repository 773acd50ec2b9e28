"""``rootleaf model``: export models with their signature into a repository.

``rootleaf model export-demo --out DIR --inputs name:width[:dtype],... --hidden 64,32
--outputs ctr --seed 1`` builds and exports a demo MLP; ``rootleaf model export --module
FILE.pt --out DIR --inputs a,b --outputs ctr`` re-exports an existing TorchScript file with a
given signature; ``rootleaf model signature DIR`` prints a version's signature.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from leaf import torchscript
from leaf.demo_model import build_demo_model
from leaf.export import export_model, read_signature
from contract.dtypes import DTYPES


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _parse_inputs(text: str) -> tuple[dict[str, int], dict[str, str]]:
    widths: dict[str, int] = {}
    dtypes: dict[str, str] = {}
    for item in _csv(text):
        parts = item.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError(f"--inputs item {item!r}: expected name:width[:dtype]")
        name = parts[0]
        try:
            widths[name] = int(parts[1])
        except ValueError:
            raise ValueError(f"--inputs item {item!r}: width must be an int") from None
        if len(parts) == 3:
            if parts[2] not in DTYPES:
                raise ValueError(f"--inputs item {item!r}: unknown dtype {parts[2]!r}")
            dtypes[name] = parts[2]
    if not widths:
        raise ValueError("--inputs must name at least one input")
    return widths, dtypes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rootleaf model", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("export-demo", help="build and export a deterministic demo MLP")
    demo.add_argument("--out", type=Path, required=True, help="version directory to write")
    demo.add_argument("--inputs", required=True, help="name:width[:dtype],... in signature order")
    demo.add_argument("--hidden", default="64,32", help="hidden layer sizes (default %(default)s)")
    demo.add_argument("--outputs", default="score", help="output names (default %(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    exp = sub.add_parser("export", help="export a TorchScript file with a signature")
    exp.add_argument("--module", type=Path, required=True, help="a TorchScript archive")
    exp.add_argument("--out", type=Path, required=True, help="version directory to write")
    exp.add_argument("--inputs", required=True, help="input names, in order")
    exp.add_argument("--outputs", required=True, help="output names, in order")
    sig = sub.add_parser("signature", help="print a version directory's signature")
    sig.add_argument("version_dir", type=Path)
    return p


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "export-demo":
            widths, dtypes = _parse_inputs(args.inputs)
            hidden = [int(h) for h in _csv(args.hidden)]
            module = build_demo_model(widths, hidden, _csv(args.outputs), args.seed)
            path = export_model(module, args.out, list(widths), _csv(args.outputs), input_dtypes=dtypes or None)
        elif args.command == "export":
            loaded = torchscript.load(str(args.module), torch.device("cpu"))
            path = export_model(loaded, args.out, _csv(args.inputs), _csv(args.outputs))
        else:
            sys.stdout.write(read_signature(args.version_dir).to_json())
            return 0
    except (ValueError, OSError) as exc:
        print(f"rootleaf model {args.command}: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
