"""Typed errors of the root's request path and their one mapping to gRPC status codes.

Client errors (bad request, unknown model) are separated from unavailability (store or
leaves down, deadline) and from internal failures, which get a generic message while the
traceback is logged with the request id. Stateless.
"""

from __future__ import annotations

import grpc


_SHOWN_CHARS = 256
"""Most characters of a client-supplied string repeated in an error message."""


def shown(text: str) -> str:
    """``repr(text)`` for an error message, cut after ``_SHOWN_CHARS`` characters: the text is
    the client's, and the status message must stay small however long it is."""
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_CHARS]!r}... ({len(text)} chars)"


class RootError(Exception):
    """Base of errors the root reports to its client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequest(RootError):
    """The request is malformed (empty or too many models/candidates, bad tensors)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(RootError):
    """A requested model is hosted by no partition."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, model: str) -> None:
        super().__init__(f"model {shown(model)} is not hosted by any partition")
        self.model = model


class Overloaded(RootError):
    """Too many calls in flight."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class StoreUnavailable(RootError):
    """The feature store could not answer."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RootError):
    """The call's deadline passed inside the root."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class LeafCallError(Exception):
    """One leaf call failed; becomes the ``error_code`` of its model's result only."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for ``exc`` (the single mapping point)."""
    if isinstance(exc, RootError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error in the root (see its log for the request id)"
