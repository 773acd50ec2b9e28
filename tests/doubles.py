"""Test doubles of the root's collaborators: a leaf partition served by an async callable in
this process, so root logic is tested without sockets (the bytes are those of the wire)."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Mapping, Sequence

import grpc

from protos.rootleaf.v1 import leaf_pb2
from root.errors import LeafCallError
from wire import codec
from wire.codec import DEFAULT_LIMITS, CodecError
from wire.pack_reader import decode_entry, read_pack


LeafHandler = Callable[[leaf_pb2.LeafRequest], Awaitable[leaf_pb2.LeafResponse]]


class InProcessLeafClient:
    """A partition served by an async callable in this process (same bytes as on the wire).

    ``versions`` (model -> loaded versions) is what the partition reports as loaded; None
    means not known (every version may be tried). A partition call is served model by
    model: each model's inputs are taken from the pack and handed to the callable as the
    ``LeafRequest`` ``Leaf/Score`` would have received."""

    def __init__(self, handler: LeafHandler, versions: Mapping[str, Sequence[str]] | None = None) -> None:
        self._handler = handler
        self.versions = versions
        self.received: int = 0
        """Requests handed to the handler."""
        self.partition_calls: int = 0
        """Partition calls received."""

    def served_versions(self, model: str) -> frozenset[str] | None:
        if self.versions is None:
            return None
        return frozenset(self.versions.get(model, ()))

    async def score(
        self, payload: bytes, timeout_s: float, model: str = "", version: str = ""
    ) -> leaf_pb2.LeafResponse:
        request = leaf_pb2.LeafRequest.FromString(payload)
        self.received += 1
        try:
            return await asyncio.wait_for(self._handler(request), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            raise LeafCallError(grpc.StatusCode.DEADLINE_EXCEEDED, "in-process leaf deadline exceeded") from None
        except LeafCallError as exc:
            if exc.code == grpc.StatusCode.FAILED_PRECONDITION and version and self.versions is not None:
                # As the gRPC client does: a version the leaf says it lacks is struck off.
                self.versions = {**self.versions, model: [v for v in self.versions.get(model, ()) if v != version]}
            raise

    async def score_partition(
        self, payload: bytes, timeout_s: float, models: Sequence[tuple[str, str]] = ()
    ) -> leaf_pb2.PartitionResponse:
        request = leaf_pb2.PartitionRequest.FromString(payload)
        self.partition_calls += 1
        try:
            entries = read_pack(request.features, DEFAULT_LIMITS)
        except CodecError as exc:
            raise LeafCallError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        data = request.features.data
        tensors = [codec.encode(e.name, decode_entry(e, data), "none", dtype=e.dtype) for e in entries]

        async def one(model: leaf_pb2.PartitionModel) -> leaf_pb2.ModelReply:
            single = leaf_pb2.LeafRequest(
                request_id=request.request_id, model=model.name, version=model.version,
                num_candidates=request.num_candidates,
            )
            single.features.extend(tensors[i] for i in model.features)
            try:
                response = await self.score(single.SerializeToString(), timeout_s, model.name, model.version)
            except LeafCallError as exc:
                return leaf_pb2.ModelReply(model=model.name, error_code=exc.code.value[0], error_message=exc.message)
            return leaf_pb2.ModelReply(model=response.model, version=response.version, outputs=response.outputs)

        replies = await asyncio.gather(*(one(m) for m in request.models))
        return leaf_pb2.PartitionResponse(models=replies)

    async def check_ready(self, timeout_s: float) -> int:
        return 1

    async def refresh_versions(self, timeout_s: float) -> None:
        return None

    async def close(self) -> None:
        return None
