"""Deterministic demo models: an MLP over many named features, scripted for serving.

Used by the demo, the benchmarks and tests to generate models with realistic signatures
(hundreds of inputs). Stateless; no threads.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import torch

from contract.dtypes import DTYPES
from leaf import torchscript
from leaf.export import export_model

# Integer features (ids, id lists) are folded into [0, 1) by this modulus: cheap,
# deterministic, and enough to make scores depend on them.
ID_MODULUS = 1009


class DemoModel(torch.nn.Module):
    """Flatten each input to ``[N, width]`` float32, concatenate, MLP, sigmoid."""

    def __init__(
        self,
        input_names: List[str],
        widths: List[int],
        hidden: List[int],
        num_outputs: int,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.input_names = input_names
        self.widths = widths
        self.id_modulus = ID_MODULUS
        sizes = [sum(widths)] + hidden + [num_outputs]
        layers: List[torch.nn.Module] = []
        for i in range(len(sizes) - 1):
            linear = torch.nn.Linear(sizes[i], sizes[i + 1])
            bound = math.sqrt(3.0 / sizes[i])
            with torch.no_grad():
                linear.weight.uniform_(-bound, bound, generator=generator)
                linear.bias.uniform_(-0.1, 0.1, generator=generator)
            layers.append(linear)
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        self.mlp = torch.nn.Sequential(*layers)

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        columns: List[torch.Tensor] = []
        for name, width in zip(self.input_names, self.widths):
            x = features[name]
            if x.is_floating_point():
                x = x.to(torch.float32)
            else:
                x = torch.remainder(x.to(torch.int64), self.id_modulus).to(torch.float32) / float(
                    self.id_modulus
                )
            columns.append(x.reshape(x.shape[0], width))
        return torch.sigmoid(self.mlp(torch.cat(columns, dim=1)))


def build_demo_model(
    input_widths: Mapping[str, int],
    hidden: Sequence[int],
    outputs: Sequence[str],
    seed: int,
) -> torch.jit.ScriptModule:
    """A scripted ``DemoModel``: same arguments and seed -> same weights and scores.

    ``input_widths`` maps each input (in signature order) to its flattened width per row;
    returns scores ``[N, len(outputs)]`` in (0, 1).
    """
    if not input_widths:
        raise ValueError("input_widths must name at least one input")
    for name, width in input_widths.items():
        if not isinstance(width, int) or width <= 0:
            raise ValueError(f"input_widths[{name!r}] must be a positive int, got {width!r}")
    if any(not isinstance(h, int) or h <= 0 for h in hidden):
        raise ValueError(f"hidden sizes must be positive ints, got {list(hidden)!r}")
    if not outputs:
        raise ValueError("outputs must name at least one output")
    generator = torch.Generator().manual_seed(seed)
    model = DemoModel(
        list(input_widths), list(input_widths.values()), list(hidden), len(outputs), generator
    )
    model.eval()
    return torchscript.script(model)


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


def main(argv: list[str]) -> int:
    """``rootleaf demo-model --out DIR --inputs name:width[:dtype],... [--hidden 64,32]
    [--outputs ctr] [--seed 1]``: build a deterministic demo MLP and export it."""
    parser = argparse.ArgumentParser(prog="rootleaf demo-model", description="build and export a deterministic demo MLP")
    parser.add_argument("--out", type=Path, required=True, help="version directory to write")
    parser.add_argument("--inputs", required=True, help="name:width[:dtype],... in signature order")
    parser.add_argument("--hidden", default="64,32", help="hidden layer sizes (default %(default)s)")
    parser.add_argument("--outputs", default="score", help="output names (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        widths, dtypes = _parse_inputs(args.inputs)
        hidden = [int(h) for h in _csv(args.hidden)]
        module = build_demo_model(widths, hidden, _csv(args.outputs), args.seed)
        examples = {name: torch.zeros((2, width), dtype=getattr(torch, dtypes.get(name, "float32")))
                    for name, width in widths.items()}
        path = export_model(module, args.out, list(widths), _csv(args.outputs), example_inputs=examples)
    except (ValueError, OSError) as exc:
        print(f"rootleaf demo-model: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
