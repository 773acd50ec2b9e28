"""A model version's signature (``module_info.json``): parsing, validation and reading.

The file is part of the contract between the model exporter (leaf), the bundle build
(deploy) and, through the bundle file, the root's trimmer, so it is parsed in one place.
Reading needs no torch: the copy inside ``model.pt`` is a zip member
``*/extra/module_info.json``. Pure functions; no shared state.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from contract.dtypes import DTYPES

MODEL_FILE = "model.pt"
SIGNATURE_FILE = "module_info.json"
# Largest signature accepted from a file (a few thousand feature names fit easily).
MAX_SIGNATURE_BYTES = 8 * 1024 * 1024


class SignatureError(ValueError):
    """A signature is missing or malformed (or, at export, a module breaks the convention)."""


def _check_names(field: str, names: Sequence[str], *, allow_empty: bool) -> None:
    if not names and not allow_empty:
        raise SignatureError(f"{field} must not be empty")
    if any(not isinstance(n, str) or not n for n in names):
        raise SignatureError(f"{field} must be non-empty strings, got {list(names)!r}")
    if len(set(names)) != len(names):
        raise SignatureError(f"{field} has duplicate names: {list(names)!r}")


@dataclass(frozen=True, slots=True)
class Signature:
    """What a model consumes and produces, by name and in order."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_dtypes: Mapping[str, str] | None = None
    """Optional declared wire dtype per input (``contract.dtypes.DTYPES`` keys); inputs not
    named here accept any dtype."""
    input_shapes: Mapping[str, tuple[int, ...]] | None = None
    """Optional declared shape per input of one candidate's value (the dims after the
    leading candidate dim; ``()`` for a scalar); inputs not named here accept any shape."""

    def __post_init__(self) -> None:
        _check_names("input_names", self.input_names, allow_empty=True)
        _check_names("output_names", self.output_names, allow_empty=False)
        if self.input_dtypes is not None:
            for name, dtype in self.input_dtypes.items():
                if name not in self.input_names:
                    raise SignatureError(f"input_dtypes names {name!r}, which is not an input")
                if dtype not in DTYPES:
                    raise SignatureError(f"input_dtypes[{name!r}] = {dtype!r} is not a known dtype")
        if self.input_shapes is not None:
            shapes: dict[str, tuple[int, ...]] = {}
            for name, shape in self.input_shapes.items():
                if name not in self.input_names:
                    raise SignatureError(f"input_shapes names {name!r}, which is not an input")
                if isinstance(shape, (str, bytes)) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
                ):
                    raise SignatureError(f"input_shapes[{name!r}] = {shape!r} is not a list of dims >= 0")
                shapes[name] = tuple(shape)
            object.__setattr__(self, "input_shapes", shapes)

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
        }
        if self.input_dtypes:
            doc["input_dtypes"] = dict(self.input_dtypes)
        if self.input_shapes:
            doc["input_shapes"] = {name: list(shape) for name, shape in self.input_shapes.items()}
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_doc(cls, doc: object, source: str = SIGNATURE_FILE) -> "Signature":
        """From a parsed JSON value; extra keys (e.g. a bundle entry's ``version``) are ignored."""
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
        shapes = doc.get("input_shapes")
        if shapes is not None and (
            not isinstance(shapes, dict) or not all(isinstance(v, list) for v in shapes.values())
        ):
            raise SignatureError(f"{source}: 'input_shapes' must map names to lists of dims")
        try:
            return cls(tuple(doc["input_names"]), tuple(doc["output_names"]), dtypes or None, shapes or None)
        except SignatureError as exc:
            raise SignatureError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes, source: str = SIGNATURE_FILE) -> "Signature":
        if len(text) > MAX_SIGNATURE_BYTES:
            raise SignatureError(f"{source}: larger than {MAX_SIGNATURE_BYTES} bytes")
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SignatureError(f"{source}: not valid JSON ({exc})") from None
        return cls.from_doc(doc, source)


def read_signature(version_dir: str | Path) -> Signature:
    """The signature of a version: the standalone file first, else the one inside the archive."""
    version_dir = Path(version_dir)
    standalone = version_dir / SIGNATURE_FILE
    if standalone.is_file():
        try:
            if standalone.stat().st_size > MAX_SIGNATURE_BYTES:
                raise SignatureError(f"{standalone}: larger than {MAX_SIGNATURE_BYTES} bytes")
            raw = standalone.read_bytes()
        except OSError as exc:
            raise SignatureError(f"{standalone}: cannot read ({exc})") from None
        return Signature.from_json(raw, str(standalone))
    archive = version_dir / MODEL_FILE
    if not archive.exists():
        raise SignatureError(f"{version_dir}: no {SIGNATURE_FILE} and no {MODEL_FILE}")
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.filename.split("/")[-2:] == ["extra", SIGNATURE_FILE]:
                    if info.file_size > MAX_SIGNATURE_BYTES:
                        raise SignatureError(f"{archive}: embedded signature is too large")
                    return Signature.from_json(zf.read(info), f"{archive}:{info.filename}")
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise SignatureError(f"{archive}: cannot read archive ({exc})") from None
    raise SignatureError(f"{version_dir}: no {SIGNATURE_FILE} beside or inside {MODEL_FILE}")
