"""Model artifacts: export a TorchScript model with its signature, and read signatures back.

A version directory holds ``model.pt`` (a TorchScript archive whose extra file
``module_info.json`` carries the signature) and the same ``module_info.json`` beside it.

Calling convention checked here (at export and again at load):
``forward(features: Dict[str, Tensor]) -> Tensor`` of shape ``[N, len(output_names)]``
(or ``[N]`` with one output), or ``-> Dict[str, Tensor]`` keyed by output name, each ``[N]``
(or ``[N, 1]``). Stateless; no threads.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from leaf import torchscript
from protos.codec import DTYPE_NAMES

MODEL_FILE = "model.pt"
SIGNATURE_FILE = "module_info.json"
# Largest signature accepted from a file (a few thousand feature names fit easily).
MAX_SIGNATURE_BYTES = 8 * 1024 * 1024

_ALLOWED_RETURNS = ("Tensor", "Dict[str, Tensor]")


class SignatureError(ValueError):
    """A signature is missing or malformed, or a module breaks the calling convention."""


@dataclass(frozen=True, slots=True)
class Signature:
    """What a model consumes and produces, by name and in order."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_dtypes: Mapping[str, str] | None = None
    """Optional declared wire dtype per input (``protos.codec.DTYPE_NAMES`` keys); inputs not
    named here accept any dtype."""

    def __post_init__(self) -> None:
        _check_names("input_names", self.input_names, allow_empty=True)
        _check_names("output_names", self.output_names, allow_empty=False)
        if self.input_dtypes is not None:
            for name, dtype in self.input_dtypes.items():
                if name not in self.input_names:
                    raise SignatureError(f"input_dtypes names {name!r}, which is not an input")
                if dtype not in DTYPE_NAMES:
                    raise SignatureError(f"input_dtypes[{name!r}] = {dtype!r} is not a known dtype")

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
        }
        if self.input_dtypes:
            doc["input_dtypes"] = dict(self.input_dtypes)
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "module_info.json") -> "Signature":
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SignatureError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise SignatureError(f"{source}: expected a JSON object")
        for key in ("input_names", "output_names"):
            value = doc.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SignatureError(f"{source}: {key!r} must be a list of strings")
        dtypes = doc.get("input_dtypes")
        if dtypes is not None and (
            not isinstance(dtypes, dict) or not all(isinstance(v, str) for v in dtypes.values())
        ):
            raise SignatureError(f"{source}: 'input_dtypes' must map names to dtype names")
        try:
            return cls(tuple(doc["input_names"]), tuple(doc["output_names"]), dtypes or None)
        except SignatureError as exc:
            raise SignatureError(f"{source}: {exc}") from None


def _check_names(field: str, names: Sequence[str], *, allow_empty: bool) -> None:
    if not names and not allow_empty:
        raise SignatureError(f"{field} must not be empty")
    if any(not isinstance(n, str) or not n for n in names):
        raise SignatureError(f"{field} must be non-empty strings, got {list(names)!r}")
    if len(set(names)) != len(names):
        raise SignatureError(f"{field} has duplicate names: {list(names)!r}")


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


def export_model(
    module: torch.nn.Module | torch.jit.ScriptModule,
    directory: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    input_dtypes: Mapping[str, str] | None = None,
) -> Path:
    """Script ``module`` if needed and save it as ``directory/model.pt`` with its signature.

    Files are written under temporary names and renamed into place, signature first, so a
    leaf watching the repository never sees a half-written archive. Returns the model path.
    """
    signature = Signature(tuple(input_names), tuple(output_names), input_dtypes)
    scripted = module if isinstance(module, torch.jit.ScriptModule) else torchscript.script(module)
    check_calling_convention(scripted, where=type(module).__name__)
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


def read_signature(version_dir: str | Path) -> Signature:
    """The signature of a version: the standalone file first, else the one inside the archive."""
    version_dir = Path(version_dir)
    standalone = version_dir / SIGNATURE_FILE
    if standalone.is_file():
        if standalone.stat().st_size > MAX_SIGNATURE_BYTES:
            raise SignatureError(f"{standalone}: larger than {MAX_SIGNATURE_BYTES} bytes")
        return Signature.from_json(standalone.read_bytes(), str(standalone))
    archive = version_dir / MODEL_FILE
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                parts = info.filename.split("/")
                if parts[-2:] == ["extra", SIGNATURE_FILE]:
                    if info.file_size > MAX_SIGNATURE_BYTES:
                        raise SignatureError(f"{archive}: embedded signature is too large")
                    return Signature.from_json(zf.read(info), f"{archive}:{info.filename}")
    except (OSError, zipfile.BadZipFile) as exc:
        raise SignatureError(f"{archive}: cannot read archive ({exc})") from None
    raise SignatureError(f"{version_dir}: no {SIGNATURE_FILE} beside or inside {MODEL_FILE}")
