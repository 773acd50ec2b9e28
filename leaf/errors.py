"""Typed leaf errors and their one mapping to gRPC status codes (used by the servicer only).

Client errors (INVALID_ARGUMENT, NOT_FOUND) are kept apart from overload and unavailability
(RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAVAILABLE) and from model failures (INTERNAL).
Any other exception is a bug: INTERNAL with a generic message, traceback logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from wire.codec import CodecError


class LeafError(Exception):
    """Base of every error the leaf reports to a caller; ``code`` is its gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequest(LeafError):
    """The request is malformed (names the feature or field at fault)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


def invalid_feature(exc: CodecError) -> InvalidRequest:
    """The refusal of a request whose feature ``exc.tensor`` the codec refused."""
    return InvalidRequest(f"feature {exc.tensor!r}: {exc.reason}")


class ModelNotFound(LeafError):
    """The model is not hosted by this leaf."""

    code = grpc.StatusCode.NOT_FOUND


class VersionNotLoaded(LeafError):
    """The request names a version this leaf has not loaded (never served by another version:
    the caller trimmed its features for the version it named)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ModelUnavailable(LeafError):
    """The model is hosted but no version of it is loaded (every load failed so far)."""

    code = grpc.StatusCode.UNAVAILABLE


class Overloaded(LeafError):
    """The model version's queue is full."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExpired(LeafError):
    """The caller's deadline passed before the request could run."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ShuttingDown(LeafError):
    """The leaf is draining and accepts no new work."""

    code = grpc.StatusCode.UNAVAILABLE


class ModelFailed(LeafError):
    """The model raised, or returned something that breaks the calling convention."""

    code = grpc.StatusCode.INTERNAL


@dataclass(frozen=True, slots=True)
class Status:
    """What a caller is told."""

    code: grpc.StatusCode
    message: str


def to_status(exc: BaseException) -> Status:
    """The status for ``exc``; unknown exceptions get a generic INTERNAL message."""
    if isinstance(exc, LeafError):
        return Status(exc.code, str(exc))
    return Status(grpc.StatusCode.INTERNAL, "internal error")
