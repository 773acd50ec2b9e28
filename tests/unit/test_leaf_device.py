"""The accelerator path of ``leaf.device`` run on CPU through an injected accelerator that
counts what crosses to the device: each input byte is copied on the host once (request-level
features as their one row, expanded on the device), staging buffers are reused once their
copy is done and never while it runs, merged batches equal the CPU path's, and a real model
served by the batcher scores the same on both paths."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import torch

from harness.demo_model import build_demo_model
from leaf.batcher import Batcher, BatchPolicy
from leaf.converter import ConvertedInputs
from leaf.device import Placement
from leaf.export import export_model
from leaf.model import load_version
from leaf.pack_inputs import InputBuilder
from wire.codec import DecodeLimits
from wire.pack_reader import PackReader
from wire.pack_writer import encode_pack

N = 512


class CountingAccelerator:
    """The CPU standing in for a device: ``upload`` copies (as a host-to-device copy
    would) and counts the bytes; fences are done when ``pending`` is False."""

    def __init__(self) -> None:
        self.uploaded_bytes = 0
        self.uploads = 0
        self.buffers: list[torch.Tensor] = []
        self.pending = False
        self._fences: list[list[bool]] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        self.buffers.append(buffer)
        return buffer

    def upload(self, host: torch.Tensor) -> tuple[torch.Tensor, object]:
        self.uploads += 1
        self.uploaded_bytes += host.numel() * host.element_size()
        fence = [not self.pending]
        self._fences.append(fence)
        return host.clone(), fence

    def finish_all(self) -> None:
        for fence in self._fences:
            fence[0] = True

    def done(self, fence: object) -> bool:
        assert isinstance(fence, list)
        return bool(fence[0])

    def wait(self, fence: object, tensor: torch.Tensor) -> None:
        assert self.done(fence), "the forward must not read a copy still running"


def _arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user": rng.standard_normal((1, 64), dtype=np.float32),  # request-level
        "user2": rng.standard_normal((1, 64), dtype=np.float32),
        "item": rng.standard_normal((n, 8), dtype=np.float32),
        "ids": rng.integers(0, 1000, (n, 4)).astype(np.float32),
    }


def _inputs(arrays: dict[str, np.ndarray], n: int) -> dict[str, torch.Tensor]:
    """The model inputs the leaf builds from a received pack (request-level ones expanded)."""
    pack = encode_pack(arrays, "none")
    table = PackReader(DecodeLimits()).read(pack)
    built = InputBuilder().build(table, pack.data, list(range(len(arrays))), {}, n)
    out = {}
    for index, name in enumerate(pack.names):
        tensor = built[index]
        assert isinstance(tensor, torch.Tensor)
        out[name] = tensor
    return out


def _unique_bytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays.values())


def test_request_level_inputs_cross_once_and_expand_on_the_device() -> None:
    arrays = _arrays(N, 0)
    inputs = _inputs(arrays, N)
    assert inputs["user"].shape == (N, 64)  # what the model sees: N rows
    accelerator = CountingAccelerator()
    staged = Placement(torch.device("cpu"), accelerator).stage(inputs, N)
    # One copy per request, of each byte once: N-fold request-level rows would be 256 KB more.
    assert accelerator.uploads == 1
    padding = 64 * len(arrays)
    assert _unique_bytes(arrays) <= accelerator.uploaded_bytes < _unique_bytes(arrays) + padding
    assert accelerator.uploaded_bytes < _unique_bytes(arrays) + N * 64 * 4
    for name, tensor in staged.tensors.items():
        assert tensor.shape == inputs[name].shape and torch.equal(tensor, inputs[name])
    assert staged.tensors["user"].stride(0) == 0  # still a broadcast, on the device


def test_staging_buffers_are_reused_once_their_copy_is_done() -> None:
    accelerator = CountingAccelerator()
    placement = Placement(torch.device("cpu"), accelerator)
    inputs = _inputs(_arrays(N, 1), N)
    for _ in range(20):
        placement.stage(inputs, N)
    assert len(accelerator.buffers) == 1
    # While copies run, their buffers are not written again: each request gets another.
    accelerator.pending = True
    for _ in range(3):
        placement.stage(inputs, N)
    assert len(accelerator.buffers) == 3
    assert len({b.data_ptr() for b in accelerator.buffers}) == 3
    accelerator.finish_all()
    accelerator.pending = False
    for _ in range(10):
        placement.stage(inputs, N)
    assert len(accelerator.buffers) == 3


def test_a_merged_batch_equals_the_cpu_path() -> None:
    sizes = (N, 3, 40)
    requests = [_inputs(_arrays(n, 10 + i), n) for i, n in enumerate(sizes)]
    names = list(requests[0])
    on_cpu = Placement(torch.device("cpu"))
    expected = on_cpu.gather([on_cpu.stage(r, n) for r, n in zip(requests, sizes)], names)
    accelerator = CountingAccelerator()
    placement = Placement(torch.device("cpu"), accelerator)
    got = placement.gather([placement.stage(r, n) for r, n in zip(requests, sizes)], names)
    for name in names:
        assert got[name].shape == (sum(sizes), *expected[name].shape[1:])
        assert torch.equal(got[name], expected[name])
    assert accelerator.uploaded_bytes < sum(_unique_bytes(_arrays(n, 0)) + 64 * 4 for n in sizes)


def test_the_batcher_scores_the_same_through_an_accelerator(tmp_path: Path) -> None:
    widths = {"user": 64, "user2": 64, "item": 8, "ids": 4}
    export_model(build_demo_model(widths, [16], ["ctr"], seed=3), tmp_path / "m" / "1", list(widths), ["ctr"])
    requests = [(_inputs(_arrays(n, 20 + i), n), n) for i, n in enumerate((N, 7, 64, N))]

    def score(placement: Placement) -> list[np.ndarray]:
        version = load_version("m", "1", tmp_path / "m" / "1", placement, DecodeLimits(), 4096)
        batcher = Batcher(placement, BatchPolicy(4096, 0.05, 64))

        async def run() -> list[np.ndarray]:
            futures = [
                batcher.submit(version, ConvertedInputs(inputs, n, 0), None, f"r{i}")
                for i, (inputs, n) in enumerate(requests)
            ]
            return [outputs["ctr"] for outputs in await asyncio.gather(*futures)]

        try:
            return asyncio.run(run())
        finally:
            batcher.close()

    accelerator = CountingAccelerator()
    on_device = score(Placement(torch.device("cpu"), accelerator))
    on_cpu = score(Placement(torch.device("cpu")))
    for got, want in zip(on_device, on_cpu):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert accelerator.uploads == len(requests)
    assert accelerator.uploaded_bytes < sum(_unique_bytes(_arrays(n, 0)) + 64 * 4 for _, n in requests)
