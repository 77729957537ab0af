"""Inbound mode: the client connects to FreeSWITCH's Event Socket and authenticates.

FreeSWITCH greets every connection with ``auth/request`` and waits 25 s for ``auth``; a
wrong password gets ``-ERR invalid``, a disconnect notice and a close; an address outside
the ACL gets a ``text/rude-rejection``. Each of those stages has a bound here (``timeout``),
so ``start()`` fails in time against a server that accepts TCP but never speaks.

Reconnect (opt-in): after an authenticated connection is lost, new connections are tried
with exponential backoff and jitter; each re-authenticates, then re-issues the subscriptions
and filters in the ledger before user commands are accepted again. Commands that were in
flight are never re-sent (they may have run): they failed with ConnectionLost. Events sent
while disconnected are lost; the gap is logged and reported to ``on_gap``.

The backoff carries over from one loss to the next: a server that accepts each connection
and then drops it at once is retried ever more slowly (up to ``reconnect_max_delay``), not
every ``reconnect_delay``. It starts over from ``reconnect_delay`` only when the connection
lost had stayed up at least ``reconnect_max_delay`` seconds (as long as the longest wait: a
server that held that long is taken to be healthy again).

``stop()`` wins over a connect in progress: ``start()`` (or a reconnect) racing it closes the
connection it opened and raises ConnectionError ("stopped while connecting").
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from genesis import tracing
from genesis._wait import wait_for
from genesis.exceptions import (
    AuthenticationError,
    ConnectionError,
    ConnectionLost,
    ConnectionTimeoutError,
    GenesisError,
)
from genesis.protocol import commands
from genesis.protocol.base import Protocol, _reply_text, is_ok
from genesis.protocol.parser import ESLEvent

logger = logging.getLogger("genesis.inbound")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Gap:
    """A period without a connection: events FreeSWITCH sent in it were not received."""

    lost_at: float
    """Wall-clock time (``time.time()``) the connection was lost."""
    restored_at: float
    """Wall-clock time the connection was usable again (subscriptions restored)."""
    attempts: int
    """Connection attempts it took."""
    reason: str
    """Why the connection was lost."""

    @property
    def duration(self) -> float:
        return self.restored_at - self.lost_at


class Inbound(Protocol):
    """A client connection to FreeSWITCH: ``async with Inbound(host, port, password) as c``.

    With ``reconnect=True`` a lost connection is re-established with backoff from
    ``reconnect_delay`` doubling up to ``reconnect_max_delay``, carried across losses until a
    connection stays up ``reconnect_max_delay`` seconds (see the module docstring).
    """

    _ready_on_connect = False

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8021,
        password: str = "ClueCon",
        timeout: float = 5.0,
        *,
        reconnect: bool = False,
        reconnect_delay: float = 0.5,
        reconnect_max_delay: float = 30.0,
        on_gap: Callable[[Gap], Any] | None = None,
        max_concurrency: int = 64,
        max_pending: int = 1024,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency, max_pending=max_pending)
        commands.check_line(password, "password")
        self.host = host
        self.port = port
        self._password = password
        self.timeout = timeout
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.on_gap = on_gap
        self.gaps: deque[Gap] = deque(maxlen=64)
        self._auth_waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._callbacks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        # Set while a stop() runs: a concurrent stop() waits for it instead of stopping again.
        self._stop_done: asyncio.Future[None] | None = None
        # The wait before the next reconnect's first attempt: grows across losses of
        # short-lived connections, so a flapping server is not hammered.
        self._backoff = reconnect_delay
        # loop.time() the current connection became usable: how long it held decides
        # whether the backoff starts over.
        self._up_since = 0.0

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else "not connected"
        return f"<Inbound {self.host}:{self.port} {state}>"

    @property
    def password(self) -> str:
        """The ``auth`` password; kept out of repr, logs and spans."""
        return self._password

    @password.setter
    def password(self, value: str) -> None:
        commands.check_line(value, "password")
        self._password = value

    async def __aenter__(self) -> Inbound:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and authenticate (each stage bounded by ``timeout``).

        Raises ConnectionTimeoutError, ConnectionError (refused, unreachable: the OSError
        is the cause; or :meth:`stop` was called meanwhile) or AuthenticationError. May be
        called again after :meth:`stop`, or during it: it then waits for the stop to finish.
        """
        stopping = self._stop_done
        if stopping is not None:
            await asyncio.shield(stopping)
        if self._transport is not None or self._reconnector is not None:
            raise GenesisError("already started: call stop() first")
        self._stopping = False
        self._backoff = self.reconnect_delay
        self._closed = asyncio.get_running_loop().create_future()
        try:
            await self._open()
        except BaseException:
            self._closed = None
            raise

    async def wait_closed(self) -> None:
        """Wait until :meth:`stop`, or until the connection is lost for good (raises then)."""
        if self._closed is None:
            raise GenesisError("not started")
        await asyncio.shield(self._closed)

    async def stop(self) -> None:
        """Close the connection, stop reconnecting, cancel pending handlers; prompt.

        The close waits up to 1 s for the socket to close, then aborts it. Cancelled
        during that wait, it aborts the socket at once and still stops the handlers
        before the CancelledError propagates. A stop() called while another runs waits
        for that one to finish.
        """
        running = self._stop_done
        if running is not None:
            await asyncio.shield(running)
            return
        done = self._stop_done = asyncio.get_running_loop().create_future()
        self._stopping = True
        reconnector, self._reconnector = self._reconnector, None
        try:
            if reconnector is not None:
                reconnector.cancel()
                await asyncio.gather(reconnector, return_exceptions=True)
        finally:
            # Each step runs even when the one before was cancelled (or failed).
            try:
                await self._close_transport()
            finally:
                for task in list(self._callbacks):
                    task.cancel()
                self._clear_ledger()
                try:
                    await self._dispatcher.close()
                finally:
                    self._finish(None)
                    self._stop_done = None
                    done.set_result(None)

    def _finish(self, error: BaseException | None) -> None:
        closed = self._closed
        if closed is not None and closed.done():
            return  # this connection's end was settled and told already
        self._tell_watchers(False)
        if closed is not None:
            if error is None:
                closed.set_result(None)
            else:
                closed.set_exception(error)
                closed.exception()  # nobody may be waiting: do not warn "never retrieved"

    # -- connect and authenticate ---------------------------------------------------------

    async def _open(self) -> None:
        tracer = tracing.tracer()
        if tracer is None:
            await self._connect()
            return
        with tracer.start_as_current_span("inbound_connect") as span:
            self.trace_connection(span)
            if span.is_recording():
                span.set_attribute("net.peer.name", self.host)
                span.set_attribute("net.peer.port", self.port)
            await self._connect()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        where = f"{self.host}:{self.port}"
        self._auth_waiter = loop.create_future()
        try:
            await self._step(wait_for(
                loop.create_connection(lambda: self, self.host, self.port), self.timeout
            ))
        except asyncio.TimeoutError as exc:
            raise ConnectionTimeoutError(
                f"connecting to {where} timed out ({self.timeout}s)") from exc
        except OSError as exc:
            raise ConnectionError(f"cannot connect to {where}: {exc.strerror or exc}") from exc
        stage = "waiting for auth/request"
        try:
            await self._step(wait_for(self._auth_waiter, self.timeout))
            stage = "waiting for the auth reply"
            frame = b"auth " + self._password.encode() + b"\n\n"
            reply = await self._step(self._request(frame, "auth", self.timeout, early=True))
            if _reply_text(reply) != "+OK accepted":
                raise AuthenticationError(f"{where} refused the password: {_reply_text(reply)}")
            stage = "restoring subscriptions and filters"
            await self._step(self._restore_ledger())
            # A peer that closes right after its last reply can be seen closing before
            # this resumes. connection_lost() then found a connection that was not ready
            # and left the loss to this sequence: it must fail here, or the client would
            # count as connected on a closed connection, with no reconnect scheduled.
            lost = self._lost
            assert lost is not None  # set by connection_made, before create_connection returned
            if lost.done():
                raise ConnectionLost(lost.result())
        except asyncio.TimeoutError as exc:
            self._abort()
            raise ConnectionTimeoutError(f"{where}: timed out {stage} ({self.timeout}s)") from exc
        except ConnectionLost as exc:
            raise ConnectionError(f"{where}: connection closed while {stage}: {exc}") from exc
        except BaseException:
            self._abort()
            raise
        self._ready = True
        self._up_since = loop.time()

    async def _step(self, step: Awaitable[_T]) -> _T:
        """Await one step of connecting; once stop() has been called, the sequence ends.

        stop() cannot close a connection create_connection has not returned yet, nor undo
        a step that completed just before it ran: so the check follows every step, and a
        connection it finds is closed here, before start() (or a reconnect) could use it.
        """
        try:
            result = await step
        except Exception as exc:
            if not self._stopping:
                raise
            cause: Exception | None = exc
        else:
            if not self._stopping:
                return result
            cause = None
        # Nobody awaits the auth waiter from here on: the close must not fail it unseen.
        self._auth_waiter = None
        await self._close_transport()
        raise ConnectionError(f"{self.host}:{self.port}: stopped while connecting") from cause

    async def _restore_ledger(self) -> None:
        for frame in self._ledger_frames():
            text = frame.decode().strip()
            reply = await self._request(frame, commands.verb(text), self.timeout, early=True)
            if not is_ok(reply):
                logger.warning("could not restore %r: %s", text, _reply_text(reply))

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _auth_request(self) -> None:
        waiter = self._auth_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        else:
            super()._auth_request()

    def _rude_rejection(self, notice: ESLEvent) -> None:
        text = (notice.body or "").strip()
        waiter = self._auth_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(AuthenticationError(f"{self.host}:{self.port} rejected: {text}"))
        else:
            super()._rude_rejection(notice)

    def _disconnect_notice(self, notice: ESLEvent) -> None:
        if logger.isEnabledFor(logging.WARNING):
            logger.warning("%s:%s disconnect notice: %s", self.host, self.port,
                           (notice.body or "").strip())

    def connection_lost(self, exc: Exception | None) -> None:
        was_ready = self._ready
        super().connection_lost(exc)
        reason = self._loss_reason(exc)
        waiter = self._auth_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionLost(reason))
        if self._stopping or not was_ready:
            return
        if self.reconnect:
            if asyncio.get_running_loop().time() - self._up_since >= self.reconnect_max_delay:
                self._backoff = self.reconnect_delay
            logger.warning("connection to %s:%s lost (%s); reconnecting",
                           self.host, self.port, reason)
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect(reason))
        else:
            logger.error("connection to %s:%s lost (%s)", self.host, self.port, reason)
            self._finish(ConnectionLost(f"connection to {self.host}:{self.port} lost: {reason}"))

    # -- reconnect ------------------------------------------------------------------------

    async def _reconnect(self, reason: str) -> None:
        lost_at = time.time()
        delay = self._backoff
        attempts = 0
        while not self._stopping:
            # Full range jitter in [delay/2, delay]: many clients of one restarted server
            # must not reconnect in lockstep.
            await asyncio.sleep(random.uniform(delay / 2, delay))
            attempts += 1
            try:
                await self._open()
            except AuthenticationError as exc:
                logger.error("reconnect to %s:%s refused, giving up: %s", self.host, self.port, exc)
                self._reconnector = None
                self._finish(exc)
                return
            except (GenesisError, OSError, asyncio.TimeoutError) as exc:
                self._abort()
                if logger.isEnabledFor(logging.INFO):
                    logger.info("reconnect attempt %d to %s:%s failed: %s",
                                attempts, self.host, self.port, exc)
                delay = min(delay * 2, self.reconnect_max_delay)
                continue
            self._reconnector = None
            # Should this connection drop before it proves stable, wait longer next time.
            self._backoff = min(delay * 2, self.reconnect_max_delay)
            gap = Gap(lost_at, time.time(), attempts, reason)
            self.gaps.append(gap)
            logger.warning("reconnected to %s:%s after %.3fs (%d attempts); events in the gap"
                           " are lost", self.host, self.port, gap.duration, attempts)
            self._report_gap(gap)
            self._tell_watchers(True)
            return

    def _report_gap(self, gap: Gap) -> None:
        callback = self.on_gap
        if callback is None:
            return
        try:
            result = callback(gap)
        except Exception:
            logger.exception("on_gap callback failed")
            return
        if inspect.isawaitable(result):
            async def run() -> None:
                try:
                    await result
                except Exception:
                    logger.exception("on_gap callback failed")

            task = asyncio.get_running_loop().create_task(run())
            self._callbacks.add(task)
            task.add_done_callback(self._callbacks.discard)
