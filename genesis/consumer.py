"""Consumer: a long-running event subscriber built on Inbound, and ``filtrate``.

A Consumer subscribes to exactly the events its handlers name (``event plain A B CUSTOM
x::y``; ALL only when a handler asked for ``"*"``), so FreeSWITCH does not serialize events
nobody reads. It waits on the connection's closing, never polls, and reconnects by default:
a FreeSWITCH restart costs a logged, reported gap, not the consumer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar

from genesis.inbound import Gap, Inbound
from genesis.protocol.parser import ESLEvent
from genesis.types import EventHandler

H = TypeVar("H", bound=Callable[..., Any])


class Consumer:
    """``app = Consumer(...)``; ``@app.handle("CHANNEL_ANSWER")``; ``await app.start()``.

    The connection is an :class:`~genesis.inbound.Inbound` (``app.protocol``) with
    reconnect on: a lost connection is retried after ``reconnect_delay`` doubling up to
    ``reconnect_max_delay`` (with jitter), the backoff carried across losses until a
    connection has stayed up ``reconnect_max_delay`` seconds, so a server that drops
    every connection at once is retried ever more slowly; each gap goes to ``on_gap``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8021,
        password: str = "ClueCon",
        timeout: float = 5.0,
        *,
        reconnect: bool = True,
        reconnect_delay: float = 0.5,
        reconnect_max_delay: float = 30.0,
        on_gap: Callable[[Gap], Any] | None = None,
        max_concurrency: int = 64,
        max_pending: int = 1024,
    ) -> None:
        self.protocol = Inbound(
            host, port, password, timeout,
            reconnect=reconnect, reconnect_delay=reconnect_delay,
            reconnect_max_delay=reconnect_max_delay, on_gap=on_gap,
            max_concurrency=max_concurrency, max_pending=max_pending,
        )

    def handle(self, event: str) -> Callable[[H], H]:
        """Register the decorated function for ``event`` (a name, a subclass, or ``"*"``)."""

        def decorator(handler: H) -> H:
            self.protocol.on(event, handler)
            return handler

        return decorator

    def subscriptions(self) -> list[str]:
        """What ``start()`` subscribes to: the handlers' keys, or just ALL for ``"*"``."""
        keys = list(self.protocol.handlers)
        return ["ALL"] if "*" in keys else keys

    async def start(self) -> None:
        """Connect, subscribe, and run until :meth:`stop` (or a loss reconnect cannot fix)."""
        await self.protocol.start()
        try:
            names = self.subscriptions()
            if names:
                await self.protocol.subscribe(*names)
        except BaseException:
            await self.protocol.stop()
            raise
        await self.protocol.wait_closed()

    async def stop(self) -> None:
        """Close the connection and cancel pending handlers; ``start()`` then returns."""
        await self.protocol.stop()


def filtrate(
    key: str, value: str | None = None, regex: bool = False
) -> Callable[[EventHandler], EventHandler]:
    """Call the decorated handler only for events that have header ``key``.

    With ``value``, the header must equal it (or, with ``regex=True``, ``re.match`` it). A
    repeated header matches when any of its values does. Use it under ``@app.handle``.
    """
    pattern = re.compile(value) if regex and value is not None else None

    def matches(found: str) -> bool:
        if pattern is not None:
            return pattern.match(found) is not None
        return found == value

    def decorator(handler: EventHandler) -> EventHandler:
        @functools.wraps(handler)
        def wrapper(event: ESLEvent) -> Any:
            found = event.get(key)
            if found is None:
                return None
            if value is not None:
                values = found if isinstance(found, list) else (found,)
                if not any(matches(v) for v in values):
                    return None
            return handler(event)

        return wrapper

    return decorator
