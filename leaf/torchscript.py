"""The one place that calls TorchScript's script/save/load.

TorchScript archives are the model artifact format of this project (signature carried as an
extra file, loadable without the model's Python code). torch 2.13 marks ``torch.jit`` as
deprecated with a ``DeprecationWarning`` on every call; the format still works, and these
wrappers silence exactly that warning so callers (and test suites that treat warnings as
errors) are not broken by it. Not used on the request path.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator, Mapping

import torch

_MESSAGE = r"`torch\.jit\.\w+` is (deprecated|not supported)"


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MESSAGE, category=DeprecationWarning)
        yield


def script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    with _quiet():
        scripted: torch.jit.ScriptModule = torch.jit.script(module)
    return scripted


def save(module: torch.jit.ScriptModule, path: str, extra_files: Mapping[str, str]) -> None:
    with _quiet():
        torch.jit.save(module, path, _extra_files=dict(extra_files))


def load(path: str, device: torch.device) -> torch.jit.ScriptModule:
    with _quiet():
        module: torch.jit.ScriptModule = torch.jit.load(path, map_location=device)
    return module
