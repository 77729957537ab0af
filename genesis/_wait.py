"""``wait_for``: :func:`asyncio.wait_for` as Python 3.12 has it, on every supported Python.

Before 3.12, a ``wait_for`` cancelled in the instant its awaitable finishes returns the
result and drops the cancellation (CPython gh-86296): the task goes on as if nobody had
cancelled it. For an engine that is not rare: a command's reply and a handler's
``task.cancel()`` arrive in one socket read, so the reply resolves the command and the
cancel lands before the command's caller resumes. Here a cancel always wins; what the
awaitable produced meanwhile is dropped, as a reply that comes after a timeout is.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

if sys.version_info >= (3, 12):
    wait_for = asyncio.wait_for
else:

    async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
        """Wait for ``aw`` at most ``timeout`` seconds (None: no limit).

        On timeout ``aw`` is cancelled and ``asyncio.TimeoutError`` raised (unless it
        finished while being cancelled: its result then). Cancelled, it cancels ``aw``,
        waits for that to take effect and raises ``CancelledError``, finished or not.
        """
        if timeout is None:
            return await aw
        future = asyncio.ensure_future(aw)
        try:
            await asyncio.wait((future,), timeout=timeout)
        except asyncio.CancelledError:
            future.cancel()
            await _settled(future)
            raise
        if future.done():
            return future.result()
        future.cancel()
        await _settled(future)
        try:
            return future.result()
        except asyncio.CancelledError as exc:
            raise asyncio.TimeoutError() from exc

    async def _settled(future: asyncio.Future[T]) -> None:
        """Wait until ``future`` is done, without raising what it holds."""
        if not future.done():
            await asyncio.wait((future,))
