"""Event routing and the bounded runner for async handlers.

Routing is two dictionary lookups per event (the event's name, then ``"*"``), plus one by
Unique-ID only while channel handlers exist; a repeated Unique-ID (a list, like any repeated
header) routes by its last value, as a repeated Event-Name does. Handler lists are replaced,
never mutated, so a handler may add or remove handlers while the list it belongs to is being
walked, and the walk needs no copy.

A handler is called inline, on the loop, in event order: a plain function completes there.
If it returns an awaitable (a coroutine function, a ``functools.partial`` of one, an object
with an async ``__call__``), the awaitable joins a FIFO backlog that at most
``max_concurrency`` worker tasks drain; workers are started on demand, so there is no task
per event. The backlog is the only buffer: when it reaches ``max_pending`` the transport
stops reading (TCP backpressure reaches FreeSWITCH, which queues up to 100,000 events per
connection itself), and reading resumes once half of it has drained. Memory is therefore
bounded by ``max_pending`` plus the events of one received chunk, whatever the event rate.
A handler failure, a CancelledError it raises included, is logged and the worker goes on;
only the cancellation of the worker itself (:meth:`Dispatcher.close`, loop shutdown) ends it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections import deque
from collections.abc import Awaitable
from time import monotonic
from typing import TYPE_CHECKING, Any

from genesis import tracing
from genesis.types import EventHandler

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from genesis.protocol.parser import ESLEvent

logger = logging.getLogger("genesis.protocol")

if sys.version_info >= (3, 11):

    def _cancelling(task: asyncio.Task[None]) -> int:
        return task.cancelling()

else:

    def _cancelling(task: asyncio.Task[None]) -> int:
        # 3.10 keeps no count of cancel requests, so only close() (which sets _closing) is
        # told apart there; any other cancel is taken for the handler's, and the worker
        # goes on until the backlog is empty.
        return 0


def _channel_uuid(value: Any) -> str | None:
    """The channel a non-str Unique-ID routes to: the last value of a repeated one.

    The parser gives a repeated header as a list; FreeSWITCH addresses the event to the
    last one, exactly as the routing name is the last Event-Name. Anything else, or an
    empty value, is no channel's.
    """
    if isinstance(value, list) and value:
        last = value[-1]
        if isinstance(last, str) and last:
            return last
    return None


class Dispatcher:
    """Handler tables, channel routing, and the async-handler backlog of one connection."""

    def __init__(self, max_concurrency: int = 64, max_pending: int = 1024) -> None:
        if max_concurrency < 1 or max_pending < 1:
            raise ValueError("max_concurrency and max_pending must be >= 1")
        self.handlers: dict[str, list[EventHandler]] = {}
        self.channels: dict[str, dict[str, list[EventHandler]]] = {}
        self.max_concurrency = max_concurrency
        self.max_pending = max_pending
        self._resume_at = max_pending // 2
        self._backlog: deque[tuple[Awaitable[Any], float, Context | None]] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        # Counted inside _work itself: a finished worker's done-callback runs a loop turn
        # later, and a submit in between must still see a free slot.
        self._worker_count = 0
        self._running = 0
        # True while close() cancels the workers: on 3.10, the only way a worker can tell
        # its own cancellation from a CancelledError its handler raised.
        self._closing = False
        self._transport: asyncio.Transport | None = None
        self.paused = False
        self.pauses = 0
        self.max_backlog = 0
        # Set by genesis.tracing while it dispatches (None when nothing is traced): the
        # OpenTelemetry context of the event being dispatched. A coroutine a handler
        # returns runs later on whichever worker is free, whose own context belongs to
        # another event; so it is queued with this one and runs inside it.
        self.trace_context: Context | None = None

    # -- registration ---------------------------------------------------------------

    def on(self, key: str, handler: EventHandler) -> None:
        self.handlers[key] = [*self.handlers.get(key, ()), handler]

    def remove(self, key: str, handler: EventHandler) -> None:
        current = self.handlers.get(key)
        if not current or handler not in current:
            raise ValueError(f"handler {handler!r} is not registered for {key!r}")
        rest = list(current)
        rest.remove(handler)
        if rest:
            self.handlers[key] = rest
        else:
            del self.handlers[key]

    def on_channel(self, uuid: str, key: str, handler: EventHandler) -> None:
        table = self.channels.setdefault(uuid, {})
        table[key] = [*table.get(key, ()), handler]

    def remove_channel(self, uuid: str, key: str, handler: EventHandler) -> None:
        table = self.channels.get(uuid)
        current = table.get(key) if table else None
        if table is None or not current or handler not in current:
            raise ValueError(f"handler {handler!r} is not registered for {uuid!r}/{key!r}")
        rest = list(current)
        rest.remove(handler)
        if rest:
            table[key] = rest
        else:
            del table[key]
            if not table:
                del self.channels[uuid]

    # -- dispatch (hot path) ------------------------------------------------------------

    def dispatch(self, event: ESLEvent, name: str | None) -> None:
        """Run every handler of ``event``: by name, then ``"*"``, then its channel's."""
        handlers = self.handlers
        if name is not None:
            found = handlers.get(name)
            if found is not None:
                self._run(found, event)
        found = handlers.get("*")
        if found is not None:
            self._run(found, event)
        if self.channels:
            uuid = event.get("Unique-ID")
            if type(uuid) is not str and uuid is not None:
                uuid = _channel_uuid(uuid)  # a list is unhashable: never a dict key
            if uuid is not None:
                table = self.channels.get(uuid)
                if table is not None:
                    if name is not None:
                        found = table.get(name)
                        if found is not None:
                            self._run(found, event)
                    found = table.get("*")
                    if found is not None:
                        self._run(found, event)

    def _run(self, handlers: list[EventHandler], event: ESLEvent) -> None:
        for handler in handlers:
            try:
                result = handler(event)
            except Exception:
                logger.exception("event handler %r failed on %s", handler, event.name)
                continue
            if result is not None and inspect.isawaitable(result):
                self.submit(result)

    # -- async handlers and backpressure ----------------------------------------------

    def submit(self, awaitable: Awaitable[Any]) -> None:
        """Queue an awaitable; start a worker if under the concurrency bound."""
        backlog = self._backlog
        backlog.append((awaitable, monotonic(), self.trace_context))
        size = len(backlog)
        if size > self.max_backlog:
            self.max_backlog = size
        if self._worker_count < self.max_concurrency:
            self._worker_count += 1
            task = asyncio.get_running_loop().create_task(self._work())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        if size >= self.max_pending and not self.paused:
            self._pause()

    async def _work(self) -> None:
        """Drain the backlog; a handler's failure is logged, the worker's own cancel ends it.

        A worker only ends with items left when close() cancels it (close() discards them),
        when its task is cancelled otherwise (loop shutdown: a replacement task would
        outlive the loop) or on KeyboardInterrupt/SystemExit (the loop stops), so it never
        hands the rest over to a new worker.
        """
        backlog = self._backlog
        try:
            worker = asyncio.current_task()
            assert worker is not None  # _work only ever runs as the task submit() created
            while backlog:
                awaitable, _queued, trace_context = backlog.popleft()
                self._running += 1
                try:
                    if trace_context is None:
                        await awaitable
                    else:
                        set_context, reset_context = tracing.context_switch()
                        token = set_context(trace_context)
                        try:
                            await awaitable
                        finally:
                            reset_context(token)
                except (Exception, asyncio.CancelledError) as exc:
                    # Awaiting a task someone cancelled raises CancelledError too: a handler
                    # failure, which must not leave the backlog (and paused reading) without
                    # a worker. Only the worker's own cancellation ends it.
                    if isinstance(exc, asyncio.CancelledError) and (
                            self._closing or _cancelling(worker)):
                        raise
                    logger.exception("async event handler failed")
                finally:
                    self._running -= 1
                if self.paused and len(backlog) <= self._resume_at:
                    self._resume()
        finally:
            self._worker_count -= 1

    def _pause(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()
            self.paused = True
            self.pauses += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("handlers behind by %d events: reading paused", len(self._backlog))

    def _resume(self) -> None:
        self.paused = False
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def attach(self, transport: asyncio.Transport | None) -> None:
        """Bind to a (new) transport, or None once it is gone; re-applies backpressure."""
        self._transport = transport
        self.paused = False
        if transport is not None and len(self._backlog) >= self.max_pending:
            self._pause()

    @property
    def events_pending(self) -> int:
        """Awaitables queued or running: how far async handlers are behind."""
        return len(self._backlog) + self._running

    @property
    def oldest_event_age(self) -> float:
        """Seconds the oldest queued (not yet started) handler call has waited; 0 if none."""
        if not self._backlog:
            return 0.0
        return monotonic() - self._backlog[0][1]

    async def close(self, *, drain: float | None = 0.0) -> None:
        """Stop the workers: let them drain for ``drain`` seconds, then cancel the rest."""
        if drain and self._workers:
            await asyncio.wait(set(self._workers), timeout=drain)
        self._closing = True
        try:
            for task in list(self._workers):
                task.cancel()
            if self._workers:
                await asyncio.wait(set(self._workers), timeout=1.0)
            while self._backlog:
                awaitable, _queued, _context = self._backlog.popleft()
                close = getattr(awaitable, "close", None)
                if close is not None:
                    close()  # a coroutine that will never run: silence "never awaited"
        finally:
            self._closing = False  # Inbound.start() may run the dispatcher again
