"""The one place that decides where models run and how inputs get there.

``cuda`` when available, else CPU. On CPU the inputs are used where they lie (views of the
received bytes). For an accelerator, each request's inputs are staged once on the host, in
a pinned buffer taken from a pool and reused once its copy is done, and sent to the device
with one copy on a copy stream as the request is submitted, so the copy overlaps the forward
of the batch before it. A request-level input (a ``[1, ...]`` feature the leaf broadcast to
N rows with ``expand``) is staged and sent as its one row and expanded on the device: the
host copies each byte once. Requests merged into one batch are concatenated on the device.

The accelerator is injectable (``Accelerator``): ``CudaAccelerator`` drives a GPU; tests
drive the same path on CPU with one that counts what crosses to the device. ``stage`` runs
on the event loops that submit requests (the pool has a lock), ``gather`` on the inference
thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import torch

log = logging.getLogger(__name__)

ALIGN = 64
"""Offset alignment of each input in a staging buffer (any dtype's view is aligned)."""
MIN_BUFFER = 1 << 16
MAX_IDLE_BUFFERS = 16
"""Staging buffers kept for reuse once their copies are done; more are freed."""


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


class Accelerator(Protocol):
    """What the staging path needs of an accelerator."""

    @property
    def device(self) -> torch.device: ...

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        """A ``uint8[nbytes]`` host buffer the copy engine reads (pinned)."""

    def upload(self, host: torch.Tensor) -> tuple[torch.Tensor, object]:
        """Start copying ``host`` to the device on the copy stream: the device tensor and a
        fence that is done once the copy is."""

    def done(self, fence: object) -> bool:
        """Whether the copy behind ``fence`` finished (its host buffer may be reused)."""

    def wait(self, fence: object, tensor: torch.Tensor) -> None:
        """Make the compute stream wait for ``fence`` before it uses ``tensor``."""


class CudaAccelerator:
    """A CUDA device: pinned staging buffers, one copy stream, events as fences."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._stream = torch.cuda.Stream(device=device)

    @property
    def device(self) -> torch.device:
        return self._device

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def upload(self, host: torch.Tensor) -> tuple[torch.Tensor, object]:
        with torch.cuda.stream(self._stream):
            on_device = host.to(self._device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        return on_device, event

    def done(self, fence: object) -> bool:
        assert isinstance(fence, torch.cuda.Event)
        return bool(fence.query())

    def wait(self, fence: object, tensor: torch.Tensor) -> None:
        assert isinstance(fence, torch.cuda.Event)
        current = torch.cuda.current_stream(self._device)
        current.wait_event(fence)
        # Allocated on the copy stream, used on this one: not to be reused before it is done.
        tensor.record_stream(current)


@dataclass(frozen=True, slots=True)
class Staged:
    """One request's inputs where the forward reads them; ``fence``: the copy to wait for."""

    tensors: dict[str, torch.Tensor]
    rows: int
    fence: object = None
    block: torch.Tensor | None = None
    """The device block the tensors are views of (None on CPU)."""


def _rows_to_send(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """A request-level input broadcast to ``rows`` rows (stride 0): its one row."""
    if tensor.dim() and rows > 1 and tensor.shape[0] == rows and tensor.stride(0) == 0:
        return tensor[:1]
    return tensor


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


class _Pool:
    """Reusable host staging buffers; a buffer returns to the pool with the fence of its copy."""

    def __init__(self, accelerator: Accelerator) -> None:
        self._accelerator = accelerator
        self._lock = threading.Lock()
        self._busy: list[tuple[torch.Tensor, object]] = []
        self._idle: list[torch.Tensor] = []

    def take(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            still: list[tuple[torch.Tensor, object]] = []
            for buffer, fence in self._busy:
                if self._accelerator.done(fence):
                    self._idle.append(buffer)
                else:
                    still.append((buffer, fence))
            self._busy = still
            fitting = [b for b in self._idle if b.numel() >= nbytes]
            if fitting:
                buffer = min(fitting, key=lambda b: b.numel())
                self._idle.remove(buffer)
                return buffer
            if len(self._idle) >= MAX_IDLE_BUFFERS:
                self._idle.remove(min(self._idle, key=lambda b: b.numel()))
        return self._accelerator.host_buffer(max(MIN_BUFFER, 1 << (nbytes - 1).bit_length()))

    def give(self, buffer: torch.Tensor, fence: object) -> None:
        with self._lock:
            self._busy.append((buffer, fence))


class Placement:
    """Where models run (``device``) and how a request's inputs get there."""

    def __init__(self, device: torch.device, accelerator: Accelerator | None = None) -> None:
        if accelerator is None and device.type == "cuda":
            accelerator = CudaAccelerator(device)
        self.device = accelerator.device if accelerator is not None else device
        self._accelerator = accelerator
        self._pool = _Pool(accelerator) if accelerator is not None else None

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def stage(self, inputs: Mapping[str, torch.Tensor], rows: int) -> Staged:
        """A request's inputs bound for the device: on CPU the same tensors; for an
        accelerator, copied once into a staging buffer (request-level ones as one row) and
        sent with one copy, returned as views of the device block (expanded again there)."""
        accelerator, pool = self._accelerator, self._pool
        if accelerator is None or pool is None:
            return Staged(dict(inputs), rows)
        sent = {name: _rows_to_send(tensor, rows) for name, tensor in inputs.items()}
        offsets: dict[str, int] = {}
        total = 0
        for name, tensor in sent.items():
            offsets[name] = total
            total += _aligned(tensor.numel() * tensor.element_size())
        buffer = pool.take(total)
        for name, tensor in sent.items():
            _view(buffer, offsets[name], tensor).copy_(tensor)
        block, fence = accelerator.upload(buffer[:total])
        pool.give(buffer, fence)
        tensors = {}
        for name, tensor in sent.items():
            on_device = _view(block, offsets[name], tensor)
            if tensor is not inputs[name]:
                on_device = on_device.expand(inputs[name].shape)
            tensors[name] = on_device
        return Staged(tensors, rows, fence, block)

    def gather(self, staged: Sequence[Staged], names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The batch's inputs: each request's rows concatenated (on the device for an
        accelerator, once its copies are done), in ``staged`` order."""
        if self._accelerator is not None:
            for item in staged:
                if item.block is not None:
                    self._accelerator.wait(item.fence, item.block)
        if len(staged) == 1:
            return staged[0].tensors
        return {name: torch.cat([item.tensors[name] for item in staged], dim=0) for name in names}


def _view(block: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """``like``'s dtype and shape over ``block`` (uint8) from ``offset``."""
    nbytes = like.numel() * like.element_size()
    return block[offset:offset + nbytes].view(like.dtype).view(like.shape)
