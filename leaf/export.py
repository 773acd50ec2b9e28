"""Model artifacts: export a TorchScript model with its signature (``contract.signature``).

A version directory holds ``model.pt`` (a TorchScript archive whose extra file
``module_info.json`` carries the signature) and the same ``module_info.json`` beside it.

Calling convention checked here (at export and again at load):
``forward(features: Dict[str, Tensor]) -> Tensor`` of shape ``[N, len(output_names)]``
(or ``[N]`` with one output), or ``-> Dict[str, Tensor]`` keyed by output name, each ``[N]``
(or ``[N, 1]``). Stateless; no threads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from contract.dtypes import DTYPES
from leaf import torchscript
from contract.signature import (  # the leaf's view of the shared contract
    MODEL_FILE,
    SIGNATURE_FILE,
    Signature,
    SignatureError,
    read_signature,
)

__all__ = ["MODEL_FILE", "SIGNATURE_FILE", "Signature", "SignatureError", "check_calling_convention",
           "example_layout", "export_model", "read_signature"]

_ALLOWED_RETURNS = ("Tensor", "Dict[str, Tensor]")


def check_calling_convention(module: torch.jit.ScriptModule, where: str = "model") -> None:
    """Raise ``SignatureError`` unless ``forward`` takes ``Dict[str, Tensor]`` and returns
    ``Tensor`` or ``Dict[str, Tensor]``."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is None:
        raise SignatureError(f"{where}: has no scripted forward method")
    args = [a for a in schema.arguments if a.name != "self"]
    if len(args) != 1 or str(args[0].type) != "Dict[str, Tensor]":
        raise SignatureError(
            f"{where}: forward must take one Dict[str, Tensor] argument, got {schema}"
        )
    returns = [str(r.type) for r in schema.returns]
    if len(returns) != 1 or returns[0] not in _ALLOWED_RETURNS:
        raise SignatureError(f"{where}: forward must return Tensor or Dict[str, Tensor], got {schema}")


def example_layout(
    input_names: Sequence[str], example_inputs: Mapping[str, torch.Tensor]
) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """Each input's dtype name (``contract.dtypes``) and per-candidate shape (the dims after
    the leading candidate dim) as ``example_inputs`` show them."""
    dtypes: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name in input_names:
        example = example_inputs.get(name)
        if not isinstance(example, torch.Tensor) or example.dim() < 1:
            raise SignatureError(f"example_inputs[{name!r}]: expected a tensor [N, ...], got {example!r}")
        dtype = str(example.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise SignatureError(f"example_inputs[{name!r}]: dtype {dtype} is not one of {', '.join(DTYPES)}")
        dtypes[name] = dtype
        shapes[name] = tuple(example.shape[1:])
    return dtypes, shapes


def export_model(
    module: torch.nn.Module | torch.jit.ScriptModule,
    directory: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    input_dtypes: Mapping[str, str] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Script ``module`` if needed and save it as ``directory/model.pt`` with its signature.

    ``example_inputs`` (one ``[N, ...]`` tensor per input, run through the model once here)
    declare every input's dtype and per-candidate shape in the signature, so a leaf checks
    them from its first request; ``input_dtypes`` / ``input_shapes`` given as well must agree.
    Files are written under temporary names and renamed into place, signature first, so a
    leaf watching the repository never sees a half-written archive. Returns the model path.
    """
    shapes = None if input_shapes is None else {name: tuple(dims) for name, dims in input_shapes.items()}
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torchscript.script(module)
    check_calling_convention(scripted, where=type(module).__name__)
    if example_inputs is not None:
        seen_dtypes, seen_shapes = example_layout(input_names, example_inputs)
        for given, seen, what in ((input_dtypes, seen_dtypes, "input_dtypes"), (shapes, seen_shapes, "input_shapes")):
            for name, value in (given or {}).items():
                if name in seen and seen[name] != value:
                    raise SignatureError(f"{what}[{name!r}] = {value!r}, the example input has {seen[name]!r}")
        input_dtypes, shapes = seen_dtypes, seen_shapes
        try:
            with torch.inference_mode():
                scripted({name: example_inputs[name] for name in input_names})
        except Exception as exc:  # the model's own error, whatever its type
            raise SignatureError(f"{type(module).__name__}: the example inputs fail the model: {exc}") from None
    signature = Signature(tuple(input_names), tuple(output_names), input_dtypes, shapes)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = signature.to_json()
    info_tmp = directory / f".{SIGNATURE_FILE}.tmp"
    info_tmp.write_text(info)
    os.replace(info_tmp, directory / SIGNATURE_FILE)
    model_tmp = directory / f".{MODEL_FILE}.tmp"
    torchscript.save(scripted, str(model_tmp), {SIGNATURE_FILE: info})
    target = directory / MODEL_FILE
    os.replace(model_tmp, target)
    return target
