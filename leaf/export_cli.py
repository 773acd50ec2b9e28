"""``rootleaf model``: export models with their signature into a repository.

``rootleaf model export --module FILE.pt --out DIR --inputs a,b --outputs ctr --example-inputs
X.npz`` re-exports an existing TorchScript file with a given signature, each input's dtype
and per-candidate shape taken from the example arrays; ``rootleaf model signature DIR`` prints
a version's signature. (Demo models: ``rootleaf demo-model``.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from leaf import torchscript
from leaf.export import export_model, read_signature


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rootleaf model", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="export a TorchScript file with a signature")
    exp.add_argument("--module", type=Path, required=True, help="a TorchScript archive")
    exp.add_argument("--out", type=Path, required=True, help="version directory to write")
    exp.add_argument("--inputs", required=True, help="input names, in order")
    exp.add_argument("--outputs", required=True, help="output names, in order")
    exp.add_argument("--example-inputs", type=Path, required=True,
                     help="a .npz with one [N, ...] array per input: run through the model once, "
                          "it declares each input's dtype and per-candidate shape in the signature")
    sig = sub.add_parser("signature", help="print a version directory's signature")
    sig.add_argument("version_dir", type=Path)
    return p


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            loaded = torchscript.load(str(args.module), torch.device("cpu"))
            with np.load(args.example_inputs, allow_pickle=False) as arrays:
                examples = {name: torch.from_numpy(arrays[name]) for name in arrays.files}
            path = export_model(loaded, args.out, _csv(args.inputs), _csv(args.outputs), example_inputs=examples)
        else:
            sys.stdout.write(read_signature(args.version_dir).to_json())
            return 0
    except (ValueError, OSError) as exc:
        print(f"rootleaf model {args.command}: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
