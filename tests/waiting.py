"""Bounded polling for conditions no event announces (a metric that follows a reply, a
process's exit, a file another process rewrites): the one place tests wait for them.

``eventually`` polls from a plain thread; ``eventually_async`` polls from a coroutine
without blocking its event loop. Both return the condition's first truthy value and raise
``AssertionError`` naming what was awaited once ``timeout_s`` has passed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Awaitable, Callable, TypeVar, cast

T = TypeVar("T")

TIMEOUT_S = 30.0  # generous: tests must pass with every core busy
EVERY_S = 0.02


def _failure(what: str | Callable[[], str], timeout_s: float) -> AssertionError:
    described = what() if callable(what) else what
    return AssertionError(f"not within {timeout_s:g} s: {described}")


def eventually(condition: Callable[[], T], what: str | Callable[[], str] = "condition",
               timeout_s: float = TIMEOUT_S, every_s: float = EVERY_S) -> T:
    """Call ``condition`` every ``every_s`` until it returns a truthy value and return that
    value; raise ``AssertionError`` (with ``what``, called if callable) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(what, timeout_s)
        time.sleep(every_s)


async def eventually_async(condition: Callable[[], T | Awaitable[T]], what: str | Callable[[], str] = "condition",
                           timeout_s: float = TIMEOUT_S, every_s: float = EVERY_S) -> T:
    """``eventually`` for a coroutine: waits with ``asyncio.sleep`` so the loop keeps
    serving; ``condition`` may be a plain function or return an awaitable."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        polled = condition()
        value = cast(T, await polled) if inspect.isawaitable(polled) else polled
        if value:
            return value
        if loop.time() > deadline:
            raise _failure(what, timeout_s)
        await asyncio.sleep(every_s)
