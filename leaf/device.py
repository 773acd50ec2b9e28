"""The one place that decides where models run and how inputs get there.

``cuda`` when available (inputs staged in pinned host memory, copied with
``non_blocking=True``), else CPU. Owned by the inference thread after construction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

log = logging.getLogger(__name__)


def resolve_device(preference: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is an error."""
    if preference == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if preference == "cuda" and not available:
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    if preference not in ("auto", "cuda"):
        raise ValueError(f"unknown device preference {preference!r}")
    return torch.device("cuda") if available else torch.device("cpu")


def configure_threads(torch_threads: int) -> None:
    """Set torch's intra-op thread count (process-wide); 0 keeps the default."""
    if torch_threads > 0 and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)


@dataclass(frozen=True, slots=True)
class Placement:
    """Moves a batch's inputs onto the device."""

    device: torch.device

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def merge(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate rows of several requests on the host (pinned when bound for a GPU)."""
        if not self.is_cuda:
            return torch.cat(list(parts), dim=0)
        rows = sum(p.shape[0] for p in parts)
        out = torch.empty((rows, *parts[0].shape[1:]), dtype=parts[0].dtype, pin_memory=True)
        torch.cat(list(parts), dim=0, out=out)
        return out

    def to_device(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inputs on the device; a no-op (same tensors, views kept) on CPU."""
        if not self.is_cuda:
            return dict(inputs)
        out: dict[str, torch.Tensor] = {}
        for name, tensor in inputs.items():
            host = tensor if tensor.is_pinned() else tensor.contiguous().pin_memory()
            out[name] = host.to(self.device, non_blocking=True)
        return out
