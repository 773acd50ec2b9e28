"""Encode-once assembly of leaf requests: one per model, or one per partition.

Every fetched feature becomes one tensor, encoded (and compressed) once and serialised once
(``EncodedTensor``); each model's ``LeafRequest`` is then its header followed by the byte
blocks of the tensors its allowlist selects, joined without re-encoding (``wire.frames``).
Request-level features travel once as ``[1, ...]`` (or tiled to ``[N, ...]`` when dedup is
off, the benchmark baseline). For partition calls each tensor is encoded once as a pack
entry (``wire.pack_writer``) and each partition's ``PartitionRequest`` carries the union of its
models' features once, with each model's inputs as indexes. Pure functions, run in the
root's encode thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from wire.codec import Compression
from protos.rootleaf.v1 import leaf_pb2
from wire.frames import EncodedTensor, TensorFramer, assemble_leaf_request
from wire.pack_writer import PackedBatch, PartitionModelRef, TensorPacker, assemble_partition_batch


@dataclass(frozen=True, slots=True)
class EncodedFeatures:
    """All tensors of one request, encoded once, in a fixed order."""

    tensors: tuple[EncodedTensor, ...]
    num_candidates: int
    raw_size: int
    """Raw bytes if every tensor were sent (the 'untrimmed' figure)."""

    def select(self, features: frozenset[str] | None) -> list[EncodedTensor]:
        """The tensors a model gets: all (``None``) or those named in ``features``."""
        if features is None:
            return list(self.tensors)
        return [t for t in self.tensors if t.name in features]


def encode_features(
    request_columns: Mapping[str, np.ndarray],
    candidate_columns: Mapping[str, np.ndarray],
    num_candidates: int,
    *,
    compression: Compression | str,
    dedup_request_features: bool,
    framer: TensorFramer | None = None,
) -> EncodedFeatures:
    """Encode request columns (each ``[1, ...]``) and candidate columns (``[N, ...]``) once.

    ``framer`` (one per root, reused across requests) must use ``compression``; without one
    a fresh framer serves this call only.
    """
    compression = Compression(compression)
    if framer is None:
        framer = TensorFramer(compression)
    elif framer.compression is not compression:
        raise ValueError(f"framer compresses with {framer.compression.value}, not {compression.value}")
    frame = framer.frame
    tensors = []
    for name, array in request_columns.items():
        if array.shape[:1] != (1,):
            raise ValueError(f"request feature {name!r} must have leading dim 1, got shape {array.shape}")
        if not dedup_request_features and num_candidates != 1:
            array = np.broadcast_to(array, (num_candidates, *array.shape[1:]))
        tensors.append(frame(name, array))
    for name, array in candidate_columns.items():
        if array.shape[:1] != (num_candidates,):
            raise ValueError(
                f"candidate feature {name!r} must have leading dim {num_candidates}, got shape {array.shape}"
            )
        tensors.append(frame(name, array))
    return EncodedFeatures(tuple(tensors), num_candidates, sum(t.raw_size for t in tensors))


@dataclass(frozen=True, slots=True)
class LeafPayload:
    """One model's serialised leaf request and its byte accounting."""

    model: str
    version: str | None
    payload: bytes
    """The exact serialised ``LeafRequest``."""
    untrimmed_bytes: int
    """Raw bytes of every fetched feature (what an untrimmed root would send, uncompressed)."""
    trimmed_bytes: int
    """Raw bytes of the tensors selected for this model."""
    feature_names: tuple[str, ...]
    """Names of the tensors sent."""

    @property
    def wire_bytes(self) -> int:
        return len(self.payload)


def build_payload(
    encoded: EncodedFeatures,
    *,
    request_id: str,
    model: str,
    version: str | None,
    features: frozenset[str] | None,
) -> LeafPayload:
    """Assemble ``model``'s request from the shared encoded tensors."""
    selected = encoded.select(features)
    header = leaf_pb2.LeafRequest(
        request_id=request_id, model=model, version=version or "", num_candidates=encoded.num_candidates
    )
    return LeafPayload(
        model=model,
        version=version,
        payload=assemble_leaf_request(header, selected),
        untrimmed_bytes=encoded.raw_size,
        trimmed_bytes=sum(t.raw_size for t in selected),
        feature_names=tuple(t.name for t in selected),
    )


def feature_union(allowlists: Iterable[frozenset[str] | None], everything: Iterable[str]) -> frozenset[str]:
    """Names to fetch: the union of the allowlists, everything when any is ``None``."""
    union: set[str] = set()
    for allow in allowlists:
        if allow is None:
            return frozenset(everything)
        union |= allow
    return frozenset(union)


# ---- one call per partition ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackedFeatures:
    """All tensors of one request, encoded once as one column-wise batch, in a fixed order."""

    batch: PackedBatch
    num_candidates: int

    @property
    def names(self) -> tuple[str, ...]:
        return self.batch.names

    @property
    def raw_size(self) -> int:
        """Raw bytes if every tensor were sent (the 'untrimmed' figure)."""
        return self.batch.raw_size


def pack_features(
    request_columns: Mapping[str, np.ndarray],
    candidate_columns: Mapping[str, np.ndarray],
    num_candidates: int,
    *,
    dedup_request_features: bool,
    packer: TensorPacker,
) -> PackedFeatures:
    """``encode_features`` for partition calls: each column encoded once by ``packer``."""
    arrays = list(request_columns.values())
    for name, array in request_columns.items():
        if array.shape[:1] != (1,):
            raise ValueError(f"request feature {name!r} must have leading dim 1, got shape {array.shape}")
    if not dedup_request_features and num_candidates != 1:
        arrays = [np.ascontiguousarray(np.broadcast_to(a, (num_candidates, *a.shape[1:]))) for a in arrays]
    leading = (num_candidates,)
    for name, array in candidate_columns.items():
        if array.shape[:1] != leading:
            raise ValueError(
                f"candidate feature {name!r} must have leading dim {num_candidates}, got shape {array.shape}"
            )
    arrays += candidate_columns.values()
    names = [*request_columns, *candidate_columns]
    return PackedFeatures(packer.pack_many(names, arrays), num_candidates)


@dataclass(frozen=True, slots=True)
class PartitionLayout:
    """Which tensors one partition call carries and which of them each model takes.

    Depends only on the request's feature names and the models' allowlists, so the root
    keeps it between requests; the serialised ``models`` field of each (model, version)
    list it serves is kept with it (``models_field``)."""

    sent: tuple[int, ...]
    """Positions (in ``PackedFeatures.tensors``) of the union of the models' features."""
    inputs: tuple[tuple[int, ...], ...]
    """Per model (call order): indexes into ``sent``."""
    sent_index: np.ndarray = field(init=False, compare=False, repr=False)
    """``sent`` as an intp array (fancy indexing)."""
    _models: dict[tuple[tuple[str, str], ...], tuple[tuple[PartitionModelRef, ...], bytes]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "sent_index", np.array(self.sent, dtype=np.intp))

    def models_field(self, models: Sequence[tuple[str, str]]) -> tuple[tuple[PartitionModelRef, ...], bytes]:
        """The call's models as refs and as the serialised ``PartitionRequest.models`` field."""
        key = tuple(models)
        found = self._models.get(key)
        if found is None:
            if len(key) != len(self.inputs):
                raise ValueError(f"{len(key)} models for a layout of {len(self.inputs)}")
            refs = tuple(PartitionModelRef(name, version, inputs) for (name, version), inputs in zip(key, self.inputs))
            message = leaf_pb2.PartitionRequest()
            for ref in refs:
                message.models.add(name=ref.name, version=ref.version, features=ref.features)
            found = (refs, message.SerializeToString())
            if len(self._models) >= _MAX_MODEL_LISTS:
                self._models.clear()
            self._models[key] = found
        return found


# (model, version) lists kept per layout: versions change with rollouts, rarely.
_MAX_MODEL_LISTS = 64


def partition_layout(names: Sequence[str], allowlists: Sequence[frozenset[str] | None]) -> PartitionLayout:
    """The union of ``allowlists`` (``None`` = every tensor) over ``names``, once, in
    ``names`` order, and each model's inputs as indexes into it."""
    everything = any(allow is None for allow in allowlists)
    union = frozenset().union(*(a for a in allowlists if a is not None)) if not everything else None
    sent = tuple(i for i, name in enumerate(names) if union is None or name in union)
    index_of = {names[i]: k for k, i in enumerate(sent)}
    inputs = []
    for allow in allowlists:
        if allow is None:
            inputs.append(tuple(range(len(sent))))
        else:
            inputs.append(tuple(k for name, k in index_of.items() if name in allow))
    return PartitionLayout(sent, tuple(inputs))


@dataclass(frozen=True, slots=True)
class PartitionPayload:
    """One partition's serialised ``PartitionRequest`` and its byte accounting."""

    partition: str
    models: tuple[PartitionModelRef, ...]
    payload: bytes
    untrimmed_bytes: int
    """Raw bytes of every fetched feature."""
    trimmed_bytes: int
    """Raw bytes of the tensors sent (the union, once)."""

    @property
    def wire_bytes(self) -> int:
        return len(self.payload)


def build_partition_payload(
    packed: PackedFeatures,
    layout: PartitionLayout,
    *,
    request_id: str,
    partition: str,
    models: Sequence[tuple[str, str]],
) -> PartitionPayload:
    """Assemble one partition's request: ``models`` as (name, version), in ``layout``'s order."""
    refs, models_field = layout.models_field(models)
    header = leaf_pb2.PartitionRequest(request_id=request_id, num_candidates=packed.num_candidates)
    sent = layout.sent_index
    batch = packed.batch
    return PartitionPayload(
        partition=partition,
        models=refs,
        payload=assemble_partition_batch(header.SerializeToString() + models_field, batch, sent),
        untrimmed_bytes=batch.raw_size,
        trimmed_bytes=int(batch.schema.raw_sizes[sent].sum()),
    )
