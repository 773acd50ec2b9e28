"""gRPC status codes at the servers' error boundary, handled one way by every servicer."""

from __future__ import annotations

from typing import NoReturn

import grpc

_STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a code's integer value, as replies carry it (an unknown
    value is UNKNOWN)."""
    return _STATUS_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with ``code`` and ``message``. ``context.abort`` raises (grpc's
    ``AbortError``) and never returns, and so does this: a caller writes nothing after it.
    Every servicer ends a failed call here."""
    await context.abort(code, message)
    raise AssertionError("ServicerContext.abort returned")  # grpc's abort always raises
