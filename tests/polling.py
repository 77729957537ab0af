"""Waiting in tests for something another task or process does, without a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from tests.compat import timeout


async def until(predicate: Callable[[], bool | Awaitable[bool]], within: float = 10.0) -> None:
    """Poll ``predicate`` (a plain or async callable) until it is true.

    ``within`` guards against a hang (TimeoutError), it is no speed assertion.
    """
    async with timeout(within):
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)


async def zero(count: Awaitable[int]) -> bool:
    """Whether the awaited count is 0: ``until(lambda: zero(balancer.get_count(t)))``."""
    return not await count
