"""Status codes of failed leaf calls, as the root reports them per model."""

from __future__ import annotations

import grpc
import pytest

from root.leaf_client import _error_of


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_leaf_side_cancellation_is_reported_unavailable() -> None:
    # The root's own cancellations arrive as asyncio.CancelledError; CANCELLED from the
    # leaf means it dropped the call, which the client must not read as its own cancel.
    error = _error_of(_rpc_error(grpc.StatusCode.CANCELLED, "server shutting down"))
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert "cancelled" in error.message and "server shutting down" in error.message


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT],
)
def test_other_codes_pass_through(code: grpc.StatusCode) -> None:
    error = _error_of(_rpc_error(code, "why"))
    assert (error.code, error.message) == (code, "why")
