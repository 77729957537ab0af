"""Outbound mode: FreeSWITCH connects to the application, one TCP connection per call.

The dialplan's ``socket host:port async full`` application opens the connection; the
application must speak first with ``connect``, whose reply is the whole channel as one
URL-encoded header block (kept, decoded, in ``session.context``). Then, per the contract:
``filter Unique-ID <uuid>`` + ``event plain ALL`` when ``events`` (only this call's events
arrive), ``linger`` when ``linger`` (FreeSWITCH keeps the socket open after hangup so
CHANNEL_HANGUP_COMPLETE and the rest still arrive, announced by a disconnect notice with
``Content-Disposition: linger``), then the handler runs with the session.

A dialplan ``socket`` without ``full`` (the connect reply says ``Control: single-channel``)
refuses ``event`` (and ``linger``) with ``-ERR command not found`` but accepts ``myevents``,
which subscribes this call's own channel events: ``events`` uses it there instead.

At hangup the session is marked ``gone``: a blocking ``sendmsg`` waiting on this channel
raises SessionGoneAway instead of waiting for an execution that will never complete.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from genesis import tracing
from genesis._wait import wait_for
from genesis.exceptions import (
    CommandStage,
    ConnectionError,
    GenesisError,
    ProtocolError,
    SessionGoneAway,
)
from genesis.protocol.base import Protocol, is_ok
from genesis.protocol.parser import ESLEvent

logger = logging.getLogger("genesis.outbound")

#: Seconds :meth:`Outbound.stop` gives a cancelled session to end before aborting its socket.
CANCEL_GRACE = 1.0

SessionHandler = Callable[["Session"], Awaitable[Any]]

#: What ``myevents`` subscribes to, for the session's own channel (mod_event_socket's list:
#: no CHANNEL_CALLSTATE, no BACKGROUND_JOB, no PLAYBACK_*). The simulator delivers the same.
MYEVENTS = frozenset({
    "CHANNEL_ANSWER", "CHANNEL_APPLICATION", "CHANNEL_BRIDGE", "CHANNEL_CREATE",
    "CHANNEL_DATA", "CHANNEL_DESTROY", "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE",
    "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_ORIGINATE", "CHANNEL_UUID",
    "CHANNEL_OUTGOING", "CHANNEL_PARK", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA",
    "CHANNEL_STATE", "CHANNEL_UNBRIDGE", "CHANNEL_UNPARK", "DETECTED_SPEECH", "DTMF",
    "NOTALK", "TALK",
})


class Session(Protocol):
    """One outbound connection: the call that FreeSWITCH handed to the application."""

    def __init__(
        self,
        server: Outbound | None = None,
        *,
        max_concurrency: int = 64,
        max_pending: int = 1024,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency, max_pending=max_pending)
        self.server = server
        self.uuid: str | None = None
        self.context: dict[str, Any] = {}
        self.channel: Any = None
        self.lingering = False
        self.gone = False

    def __repr__(self) -> str:
        return f"<Session {self.uuid} peer={self.peer} gone={self.gone}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.server is not None:
            self.server._accept(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.gone = True
        self._tell_watchers(False)

    async def close(self) -> None:
        """Close the connection (FreeSWITCH then ends the socket application).

        Waits up to 1 s for the socket to close, then aborts it, and stops the async event
        handlers. Cancelled during that wait, it aborts the socket at once and still stops
        them before the CancelledError propagates.
        """
        try:
            await self._close_transport()
        finally:
            await self._dispatcher.close()

    async def connect(self, timeout: float | None = None) -> dict[str, Any]:
        """Send ``connect``; keep the channel data in ``context`` and its uuid in ``uuid``."""
        reply = await self.send("connect", timeout=timeout)
        if not is_ok(reply) and "Unique-ID" not in reply:
            raise GenesisError(f"connect refused: {reply.get('Reply-Text')}")
        context = dict(reply)
        uuid = context.get("Unique-ID") or context.get("Channel-Unique-ID")
        if not isinstance(uuid, str):
            raise ProtocolError("connect reply carries no Unique-ID", 0, b"")
        self.context = context
        self.uuid = uuid
        return context

    @property
    def full_control(self) -> bool:
        """False on a ``socket`` without ``full``: ``event``, ``api``, ``linger``... are refused."""
        return self.context.get("Control") != "single-channel"

    async def myevents(self, timeout: float | None = None) -> None:
        """Subscribe this call's own channel events (``myevents``); GenesisError if refused."""
        reply = await self.send("myevents", timeout=timeout)
        if not is_ok(reply):
            raise GenesisError(f"myevents refused: {reply.get('Reply-Text')}")
        # Into the ledger: a blocking sendmsg or a Channel.wait then finds its events
        # subscribed, instead of sending an ``event`` command a single-channel socket refuses.
        self._events.update(MYEVENTS)

    # -- channel-bound behaviour of the base class ---------------------------------------

    def _own_channel(self) -> str:
        if self.uuid is None:
            raise GenesisError("the session is not connected yet (no uuid)")
        return self.uuid

    def _check_channel(self, uuid: str) -> None:
        if uuid == self.uuid and self.gone:
            raise SessionGoneAway(f"session {uuid} has hung up")

    def _gone_error(self, uuid: str, cause: str | None) -> Exception:
        if uuid == self.uuid:
            return SessionGoneAway(f"session {uuid} hung up ({cause})")
        return super()._gone_error(uuid, cause)

    def _execution_lost(self, reason: str, uuid: str) -> Exception:
        # The end of the connection is the end of the session's own call for this
        # application; another leg it drives may well still be up.
        if uuid == self.uuid:
            return SessionGoneAway(f"session {self.uuid}: {reason}")
        return super()._execution_lost(reason, uuid)

    def _internal_event(self, event: ESLEvent, name: str) -> None:
        if (
            not self.gone
            and name in ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE")
            and event.get("Unique-ID") == self.uuid
        ):
            self.gone = True
        super()._internal_event(event, name)

    def _disconnect_notice(self, notice: ESLEvent) -> None:
        disposition = notice.get("Content-Disposition")
        self.gone = True
        if disposition == "linger":
            self.lingering = True
        uuid = self.uuid
        if uuid is not None:
            waiters = self._exec_waiters.pop(uuid, None)
            for future in (waiters or {}).values():
                if not future.done():
                    future.set_exception(SessionGoneAway(f"session {uuid} hung up ({disposition})"))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("session %s: disconnect notice (%s)", uuid, disposition)

    def _auth_request(self) -> None:
        logger.warning("session %s: auth/request on an outbound connection ignored", self.uuid)

    def _lost_error(self, reason: str, stage: CommandStage) -> Exception:
        return super()._lost_error(f"session {self.uuid}: {reason}", stage)


class Outbound:
    """The outbound server: ``await Outbound(handler, "0.0.0.0", 9000).start()``."""

    def __init__(
        self,
        handler: SessionHandler,
        host: str = "127.0.0.1",
        port: int = 9000,
        events: bool = True,
        linger: bool = True,
        *,
        timeout: float = 5.0,
        reuse_port: bool = False,
        backlog: int = 1024,
        max_concurrency: int = 64,
        max_pending: int = 1024,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.events = events
        self.linger = linger
        self.timeout = timeout
        self.reuse_port = reuse_port
        self.backlog = backlog
        self.max_concurrency = max_concurrency
        self.max_pending = max_pending
        self.sessions: dict[Session, asyncio.Task[None]] = {}
        self._server: asyncio.Server | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs actually listened on (port 0 resolves here)."""
        if self._server is None:
            return []
        return [(s.getsockname()[0], s.getsockname()[1]) for s in self._server.sockets]

    async def start(self, block: bool = True) -> None:
        """Listen; with ``block`` serve until :meth:`stop`, else return once listening.

        ``reuse_port=True`` sets SO_REUSEPORT so several worker processes can listen on the
        same port and the kernel spreads calls between them.

        One server at a time: a start() while another is starting (still opening its socket
        included) or serving raises GenesisError at once and leaves that one alone; after
        :meth:`stop` it may be started again. A stop() that comes while the socket is being
        opened wins: start() then returns without listening. Cancelling start() (blocked
        serving, or still starting) stops the server as :meth:`stop` does, then the
        CancelledError propagates: no socket is left listening with nobody to stop it.
        """
        if self._stopped is not None and not self._stopped.done():
            raise GenesisError("already started: call stop() first")
        if self.reuse_port and not hasattr(socket, "SO_REUSEPORT"):
            raise GenesisError("reuse_port is not supported on this platform")
        loop = asyncio.get_running_loop()
        # Taken before the first await, so that a concurrent start() sees this one.
        stopped = self._stopped = loop.create_future()
        try:
            try:
                # Not serving yet: the stdlib's own start_serving() can be cancelled with
                # the socket already listening, before the server is handed back to close it.
                server = await loop.create_server(
                    self._session_factory, self.host, self.port,
                    reuse_port=self.reuse_port or None, backlog=self.backlog,
                    start_serving=False,
                )
            except OSError as exc:
                raise ConnectionError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        except BaseException:
            _settle(stopped)
            raise
        if stopped.done():
            server.close()
            return
        self._server = server
        try:
            await server.start_serving()
            if logger.isEnabledFor(logging.INFO):
                logger.info("outbound server listening on %s", self.addresses)
            if block:
                await asyncio.shield(stopped)
        except asyncio.CancelledError:
            await self.stop()
            raise

    def _session_factory(self) -> Session:
        return Session(self, max_concurrency=self.max_concurrency, max_pending=self.max_pending)

    def _accept(self, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(session))
        self.sessions[session] = task
        task.add_done_callback(lambda _t: self.sessions.pop(session, None))

    async def _serve(self, session: Session) -> None:
        tracer = tracing.tracer()
        if tracer is None:
            await self._run(session)
            return
        with tracer.start_as_current_span("outbound_handle_connection") as span:
            session.trace_connection(span)
            if span.is_recording() and session.peer is not None:
                span.set_attribute("net.peer.name", session.peer[0])
                span.set_attribute("net.peer.port", session.peer[1])
            await self._run(session)

    async def _run(self, session: Session) -> None:
        try:
            try:
                await self._handshake(session)
            except (SessionGoneAway, ConnectionError):
                raise  # the call ended early: said below, as when the handler sees it
            except asyncio.TimeoutError:
                # Only the handshake's own timeouts: a handler's (a blocking sendmsg, a
                # Channel.wait) are its failures, logged with their traceback below.
                logger.error("session %s: FreeSWITCH did not answer the handshake in %ss",
                             session.uuid, self.timeout)
                return
            except Exception:
                # A -ERR to connect, a reply without the channel...: the handler never ran,
                # so it is not its failure.
                logger.exception("session %s: outbound handshake failed", session.uuid)
                return
            await self.handler(session)
        except (SessionGoneAway, ConnectionError) as exc:
            logger.info("session %s ended: %s", session.uuid, exc)
        except (Exception, asyncio.CancelledError) as exc:
            # A CancelledError the handler raised itself (from a task it awaited that was
            # cancelled, say) fails it like any other error; only the session's own
            # cancellation (stop(), the loop shutting down) ends it quietly. Either way it
            # propagates: on 3.10 a cancel of the task from elsewhere looks like the
            # handler's own, and must not be swallowed.
            cancelled = isinstance(exc, asyncio.CancelledError)
            if not (cancelled and self._cancel_requested()):
                logger.exception("outbound handler failed for session %s", session.uuid)
            if cancelled:
                raise
        finally:
            await session.close()

    def _cancel_requested(self) -> bool:
        """Whether the running session task was asked to cancel."""
        if sys.version_info >= (3, 11):
            task = asyncio.current_task()
            return task is not None and task.cancelling() > 0
        # 3.10 counts no cancel requests: only stop()'s own is told apart (as the dispatcher
        # tells its close() apart); any other is taken for the handler's.
        return bool(self._stopping)

    async def _handshake(self, session: Session) -> None:
        """``connect``, then the events and linger options; ``session.channel`` last."""
        await session.connect(timeout=self.timeout)
        assert session.uuid is not None
        if self.events and not session.full_control:
            await session.myevents(timeout=self.timeout)
        elif self.events:
            await wait_for(session.add_filter("Unique-ID", session.uuid), self.timeout)
            await wait_for(session.subscribe("ALL"), self.timeout)
        if self.linger:
            reply = await session.send("linger", timeout=self.timeout)
            if not is_ok(reply):
                # A socket without "full" refuses it: the call's last events (after the
                # hangup) will not arrive, which the handler's author should hear about.
                logger.warning("session %s: linger refused (%s): the connection closes at "
                               "hangup", session.uuid, reply.get("Reply-Text"))
        session.channel = _channel_for(session)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening; let running sessions finish for ``timeout`` s, then cancel them.

        A session's handler may call it: the server stops without waiting for that session,
        which ends when its handler returns. A session still running ``CANCEL_GRACE`` s after
        its cancellation (its handler swallowed it) has its connection aborted and is left
        to end on its own, so stop() always returns.
        """
        # What this stop() ends is taken now: the server and the start() it was called
        # against, not whatever start() follows by the time the stop is done (a stop that
        # ends late must not end a server started again after another stop).
        server, self._server = self._server, None
        if server is not None:
            server.close()
        stopped = self._stopped
        # The work runs in its own task: a caller that the stop cancels on the way (an
        # async event handler of a session it ends: the session's workers close with it)
        # must not leave it half done, with sessions running and start() still blocked.
        stopping = asyncio.get_running_loop().create_task(
            self._stop(timeout, asyncio.current_task(), server, stopped))
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)
        await asyncio.shield(stopping)

    async def _stop(
        self,
        timeout: float,
        caller: asyncio.Task[Any] | None,
        server: asyncio.Server | None,
        stopped: asyncio.Future[None] | None,
    ) -> None:
        # Waiting for the caller's own session would be waiting for itself.
        tasks = {task: session for session, task in self.sessions.items() if task is not caller}
        if tasks and timeout > 0:
            await asyncio.wait(list(tasks), timeout=timeout)
        for task in tasks:
            task.cancel()
        if tasks:
            _done, stuck = await asyncio.wait(list(tasks), timeout=CANCEL_GRACE)
            for task in stuck:
                session = tasks[task]
                logger.error("session %s did not end when cancelled: connection aborted",
                             session.uuid)
                transport = session.writer
                if transport is not None:
                    transport.abort()
        # From 3.12 on wait_closed() waits for every connection, the caller's included.
        if server is not None and caller not in self.sessions.values():
            await server.wait_closed()
        if stopped is not None:
            _settle(stopped)


def _settle(stopped: asyncio.Future[None]) -> None:
    """Mark a start() (``Outbound._stopped``) as over, once."""
    if not stopped.done():
        stopped.set_result(None)


def _channel_for(session: Session) -> Any:
    """``Channel.from_session(session)``; the call-control module may not be installed yet."""
    try:
        module = importlib.import_module("genesis.channel")
    except ModuleNotFoundError as exc:
        if exc.name != "genesis.channel":
            raise
        logger.debug("genesis.channel not available: session.channel stays None")
        return None
    return module.Channel.from_session(session)
