"""Encode-once assembly of per-model leaf requests.

Every fetched feature becomes one tensor, encoded (and compressed) once and serialised once
(``EncodedTensor``); each model's ``LeafRequest`` is then its header followed by the byte
blocks of the tensors its allowlist selects, joined without re-encoding (``wire.frames``).
Request-level features travel once as ``[1, ...]`` (or tiled to ``[N, ...]`` when dedup is
off, the benchmark baseline). Pure functions, run in the root's encode thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from wire.codec import Compression
from protos.rootleaf.v1 import leaf_pb2
from wire.frames import EncodedTensor, TensorFramer, assemble_leaf_request


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
