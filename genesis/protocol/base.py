"""``Protocol``: one Event Socket connection, the base of Inbound and Session.

The Event Socket correlates nothing: replies come back in the order commands were written,
and that order is the only link between a command and its reply. So this class writes each
command whole with one ``transport.write`` and appends its future to a FIFO in the same
step (no await in between, hence no lock); ``data_received`` hands each reply to the oldest
future. A caller that stops waiting (timeout, cancellation) leaves its future in the FIFO,
cancelled: its late reply is consumed by that slot and dropped, never given to the next
caller. Events are routed by name (see :mod:`genesis.protocol.dispatch`).

Everything a waiting caller can wait for fails when the connection is lost: commands with
``ConnectionLost`` (stage UNCONFIRMED: written, outcome unknown), background jobs already
accepted with stage ACCEPTED, blocking ``sendmsg`` calls with the class's "gone" error.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, cast
from uuid import uuid4

from genesis import tracing
from genesis._wait import wait_for
from genesis.exceptions import (
    ChannelError,
    CommandStage,
    ConnectionLost,
    GenesisError,
    ProtocolError,
    UnconnectedError,
)
from genesis.protocol import commands
from genesis.protocol.dispatch import Dispatcher
from genesis.protocol.parser import (
    KIND_API_RESPONSE,
    KIND_AUTH_REQUEST,
    KIND_COMMAND_REPLY,
    KIND_DISCONNECT_NOTICE,
    KIND_EVENT,
    KIND_LOG,
    KIND_RUDE_REJECTION,
    ESLEvent,
    Parser,
)
from genesis.types import EventHandler

if TYPE_CHECKING:
    from opentelemetry.trace import Span

logger = logging.getLogger("genesis.protocol")

_INTERNAL = frozenset(
    {"BACKGROUND_JOB", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"}
)
_BLOCK_EVENTS = ("CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE")


def _ledger_keys(events: list[str], customs: list[str]) -> list[tuple[str, str]]:
    """The in-flight keys (``Protocol._inflight``) of event names and CUSTOM subclasses."""
    return [("event", e) for e in events] + [("custom", c) for c in customs]


def _reply_text(reply: ESLEvent) -> str:
    """What a reply says: Reply-Text of a command/reply, the first line of api output."""
    if reply.kind == KIND_API_RESPONSE:
        body = reply.body or ""
        return body.split("\n", 1)[0][:128]
    text = reply.get("Reply-Text", "")
    return text if isinstance(text, str) else " ".join(text)


def is_ok(reply: ESLEvent) -> bool:
    """True for a ``+OK`` reply (or api output that does not start with ``-ERR``)."""
    if reply.kind == KIND_API_RESPONSE:
        return not (reply.body or "").startswith("-ERR")
    return _reply_text(reply).startswith("+OK")


class Protocol(asyncio.Protocol):
    """An Event Socket connection: commands, events, routing. Subclassed by Inbound, Session."""

    _ready_on_connect = True

    def __init__(self, *, max_concurrency: int = 64, max_pending: int = 1024) -> None:
        self._dispatcher = Dispatcher(max_concurrency, max_pending)
        self.handlers: dict[str, list[EventHandler]] = self._dispatcher.handlers
        self._transport: asyncio.Transport | None = None
        # Per connection, set by connection_made: resolved by connection_lost with the
        # reason the connection ended (_loss_reason).
        self._lost: asyncio.Future[str] | None = None
        self._parser: Parser | None = None
        self._pending: deque[asyncio.Future[ESLEvent]] = deque()
        self._jobs: dict[str, asyncio.Future[ESLEvent]] = {}
        self._exec_waiters: dict[str, dict[str, asyncio.Future[ESLEvent]]] = {}
        # The ledger: what this connection asked FreeSWITCH to send, re-issued on reconnect.
        self._events: set[str] = set()
        self._customs: set[str] = set()
        self._filters: dict[tuple[str, str], int] = {}
        # Ledger entries whose request awaits its reply (see _begin_inflight).
        self._inflight: dict[tuple[str, object], asyncio.Future[None]] = {}
        self._ever_connected = False
        # The ProtocolError that made this side abort the connection, for the reason it
        # reports: connection_lost() is then told nothing (None), as for a clean close.
        self._failure: ProtocolError | None = None
        # False while a new connection is not yet usable (Inbound: before auth succeeds);
        # user commands are refused then, so none can slip in ahead of ``auth``.
        self._ready = False
        self.peer: tuple[str, int] | None = None
        # This connection's process_event spans waiting for the SDK (tracing.SpanBatch).
        self._span_batch = tracing.SpanBatch()
        # Followers of calls on this connection (genesis.channel.Channel), told when the
        # events of their calls may have been lost: True once the connection is back
        # after a gap, False once it has ended for good.
        self._watchers: set[Callable[[bool], None]] = set()

    # -- public state -------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """True while the transport is open."""
        transport = self._transport
        return self._ready and transport is not None and not transport.is_closing()

    @property
    def writer(self) -> asyncio.Transport | None:
        """The transport (kept under the name users of the old release know)."""
        return self._transport

    @property
    def has_filters(self) -> bool:
        """True when any ``filter`` is active: events then need a matching filter to arrive."""
        return bool(self._filters)

    @property
    def events_pending(self) -> int:
        """Async handler calls queued or running (lag of this connection's handlers)."""
        return self._dispatcher.events_pending

    @property
    def oldest_event_age(self) -> float:
        """Seconds the oldest queued async handler call has been waiting."""
        return self._dispatcher.oldest_event_age

    @property
    def reading_paused(self) -> bool:
        """True while backpressure holds reading."""
        return self._dispatcher.paused

    def trace_connection(self, span: Span) -> None:
        """Note ``span``, the connection span, for this connection's ``process_event`` spans.

        Called by whoever opens the connection span (Inbound, the outbound server). Event
        spans are roots of their own traces; with ``GENESIS_EVENT_SPAN_LINKS`` on they
        carry a link to this span.
        """
        self._span_batch.link(tracing.connection_links(span))

    # -- handlers -------------------------------------------------------------------------

    def on(self, key: str, handler: EventHandler) -> None:
        """Call ``handler`` for events named ``key`` (Event-Name or CUSTOM subclass; "*": all)."""
        self._dispatcher.on(key, handler)

    def remove(self, key: str, handler: EventHandler) -> None:
        """Undo :meth:`on` (ValueError if it was not registered)."""
        self._dispatcher.remove(key, handler)

    def on_channel(self, uuid: str, key: str, handler: EventHandler) -> None:
        """Call ``handler`` for events ``key`` ("*": every event) whose Unique-ID is ``uuid``."""
        self._dispatcher.on_channel(uuid, key, handler)

    def remove_channel(self, uuid: str, key: str, handler: EventHandler) -> None:
        """Undo :meth:`on_channel`; the last handler of a uuid frees its entry."""
        self._dispatcher.remove_channel(uuid, key, handler)

    def watch_gaps(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(True)`` after a reconnect, ``callback(False)`` once the connection
        has ended for good: either way, events that were due may never arrive."""
        self._watchers.add(callback)

    def unwatch_gaps(self, callback: Callable[[bool], None]) -> None:
        """Undo :meth:`watch_gaps` (nothing happens if it was not registered)."""
        self._watchers.discard(callback)

    def _tell_watchers(self, back: bool) -> None:
        for callback in list(self._watchers):
            try:
                callback(back)
            except Exception:
                logger.exception("a connection gap callback failed")

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._lost = asyncio.get_running_loop().create_future()
        self._parser = Parser(share=True)
        self._failure = None
        self._ever_connected = True
        self._ready = self._ready_on_connect
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else None
        self._dispatcher.attach(self._transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            return
        error: ProtocolError | None = None
        try:
            messages = parser.feed(data)
        except ProtocolError as exc:
            # The frames completed before the bad one are delivered: no reply is lost.
            messages = exc.messages
            error = exc
        try:
            self._handle(messages)
        except ProtocolError as exc:
            # A plain event's header lines are checked by the first read that indexes
            # them (docs/architecture.md): when that read is the engine's own, the event
            # is a bad frame like one feed() refuses, and what follows it is dropped too.
            error = exc
        finally:
            # The events share this read's bytes (Parser(share=True)): the ones a
            # handler, a queued coroutine or a span kept copy their own now.
            parser.release(messages)
        if error is not None:
            self._protocol_error(error)

    def _handle(self, messages: list[ESLEvent]) -> None:
        spans = tracing.event_spans()
        if spans is None:
            self._route(messages)
            return
        token = spans.enter(self._dispatcher)
        try:
            self._route_traced(messages, spans)
        finally:
            spans.leave(self._dispatcher, token)

    def _route_traced(self, messages: list[ESLEvent], spans: tracing.EventSpans) -> None:
        """Route a chunk's messages when events are traced: the picked ones in their spans.

        ``spans.gap`` counts the events still to route untraced before the next traced
        one. The chunk is cut where that event should be if every message were an
        event, and the run before it takes the untraced loop, so an untraced event
        costs what it costs with tracing off; the replies and other non-events the run
        held (the loop counts them) push the cut that much further.
        """
        n = len(messages)
        start = 0
        at = spans.gap
        while at < n:
            if at > start:
                others = self._route(messages[start:at])
                start = at
                if others:
                    at += others
                    continue
            message = messages[at]
            start = at + 1
            if message.kind != KIND_EVENT:
                self._route([message])
                at = start
                continue
            name = message.name
            if name in _INTERNAL:
                self._internal_event(message, name)
            spans.dispatch(self._dispatcher, message, name, self._span_batch)
            at = start + spans.next_gap()
        others = self._route(messages[start:] if start else messages) if start < n else 0
        spans.gap = at - n + others

    def _route(self, messages: list[ESLEvent]) -> int:
        """Route ``messages`` untraced; how many of them were not events."""
        dispatch = self._dispatcher.dispatch
        others = 0
        for message in messages:
            kind = message.kind
            if kind == KIND_EVENT:
                name = message.name
                if name in _INTERNAL:
                    self._internal_event(message, name)
                dispatch(message, name)
                continue
            others += 1
            if kind in (KIND_COMMAND_REPLY, KIND_API_RESPONSE):
                self._reply(message)
            elif kind == KIND_AUTH_REQUEST:
                self._auth_request()
            elif kind == KIND_DISCONNECT_NOTICE:
                self._disconnect_notice(message)
            elif kind == KIND_RUDE_REJECTION:
                self._rude_rejection(message)
            elif kind == KIND_LOG:
                dispatch(message, "LOG")
            else:
                self._unknown_frame(message)
        return others

    def _unknown_frame(self, message: ESLEvent) -> None:
        """A frame of a Content-Type the protocol does not define (or none at all).

        With no command in flight it cannot be a reply, and is skipped with a warning.
        With commands in flight it may be the reply to the oldest one: replies carry no
        id and are matched in order, so skipping it would hand each later reply to the
        command before its own. The connection is then closed as for malformed framing
        (the ProtocolError ends the chunk's routing; every pending command fails).
        """
        if self._pending:
            raise ProtocolError(
                f"frame of unknown Content-Type {message.content_type!r} while "
                f"{len(self._pending)} command(s) await replies: replies can no longer be "
                "matched to commands", None, (message.content_type or "").encode())
        if logger.isEnabledFor(logging.WARNING):
            logger.warning("ignored a frame of unknown type %r", message.content_type)

    def connection_lost(self, exc: Exception | None) -> None:
        self._span_batch.close()
        parser = self._parser
        partial = parser.buffered if parser is not None else 0
        self._transport = None
        self._parser = None
        self._ready = False
        self._dispatcher.attach(None)
        why = self._loss_reason(exc)
        lost = self._lost
        if lost is not None and not lost.done():
            lost.set_result(why)
        reason = f"connection lost ({why})"
        if partial:
            reason += f" in the middle of a frame ({partial} bytes unparsed)"
        self._fail_waiters(reason)

    async def _close_transport(self) -> None:
        """Close the connection and wait up to 1 s for it to end; abort it when that times
        out or the wait is cancelled, then let the cancel propagate.

        A peer that stopped reading keeps a closing socket open for as long as the bytes
        queued for it stay unsent, possibly forever: a close that gives up must abort.
        """
        transport, lost = self._transport, self._lost
        if transport is None:
            return
        assert lost is not None  # connection_made sets both
        transport.close()
        try:
            # asyncio.wait, not asyncio.wait_for: before 3.12, a wait_for cancelled once
            # ``lost`` is done returns its result instead of raising: the cancel is lost.
            await asyncio.wait((lost,), timeout=1.0)
        finally:
            if not lost.done():
                transport.abort()

    # -- inbound frame handlers (overridden by Inbound and Session) ---------------------

    def _reply(self, reply: ESLEvent) -> None:
        pending = self._pending
        if pending:
            future = pending.popleft()
            # A done future is a caller that gave up: this was its reply, dropped with it.
            if not future.done():
                future.set_result(reply)
            return
        if logger.isEnabledFor(logging.WARNING):
            logger.warning("reply with no pending command: %r", _reply_text(reply))

    def _auth_request(self) -> None:
        logger.warning("unexpected auth/request on an established connection")

    def _disconnect_notice(self, notice: ESLEvent) -> None:
        if logger.isEnabledFor(logging.INFO):
            logger.info("disconnect notice: %s", (notice.body or "").strip())

    def _rude_rejection(self, notice: ESLEvent) -> None:
        logger.error("FreeSWITCH refused the connection: %s", (notice.body or "").strip())

    def _loss_reason(self, exc: Exception | None) -> str:
        """Why the connection ended: the transport's error, the protocol error this side
        aborted it for (``connection_lost`` then gets None), or the peer closing it."""
        if exc is not None:
            return str(exc)
        if self._failure is not None:
            return f"protocol error: {self._failure}"
        return "closed by peer"

    def _protocol_error(self, exc: ProtocolError) -> None:
        logger.error("closing the connection: %s", exc)
        self._failure = exc
        transport = self._transport
        self._fail_waiters(f"protocol error: {exc}")
        if transport is not None:
            transport.abort()

    def _gone_error(self, uuid: str, cause: str | None) -> Exception:
        """The error a blocking sendmsg gets when its channel hangs up first."""
        return ChannelError(f"channel {uuid} hung up ({cause})", cause)

    def _lost_error(self, reason: str, stage: CommandStage) -> Exception:
        return ConnectionLost(reason, stage)

    def _fail_waiters(self, reason: str) -> None:
        pending, self._pending = self._pending, deque()
        for future in pending:
            if not future.done():
                future.set_exception(self._lost_error(reason, CommandStage.UNCONFIRMED))
        jobs, self._jobs = self._jobs, {}
        for future in jobs.values():
            if not future.done():
                future.set_exception(self._lost_error(reason, CommandStage.ACCEPTED))
        waiters, self._exec_waiters = self._exec_waiters, {}
        for uuid, channel in waiters.items():
            for future in channel.values():
                if not future.done():
                    future.set_exception(self._execution_lost(reason, uuid))

    def _execution_lost(self, reason: str, uuid: str) -> Exception:
        """The error of a blocking sendmsg on channel ``uuid`` whose connection closed
        (Session overrides it for its own channel)."""
        return self._lost_error(reason, CommandStage.ACCEPTED)

    # -- events the engine itself waits for ----------------------------------------------

    def _internal_event(self, event: ESLEvent, name: str) -> None:
        if name == "BACKGROUND_JOB":
            if self._jobs:
                job = event.get("Job-UUID")
                future = self._jobs.pop(job, None) if isinstance(job, str) else None
                if future is not None and not future.done():
                    future.set_result(event)
            return
        if not self._exec_waiters:
            return
        uuid = event.get("Unique-ID")
        if not isinstance(uuid, str):
            return
        if name == "CHANNEL_EXECUTE_COMPLETE":
            channel = self._exec_waiters.get(uuid)
            app_uuid = event.get("Application-UUID")
            if channel is not None and isinstance(app_uuid, str):
                future = channel.pop(app_uuid, None)
                if not channel:
                    del self._exec_waiters[uuid]
                if future is not None and not future.done():
                    future.set_result(event)
            return
        channel = self._exec_waiters.pop(uuid, None)
        if channel:
            cause = event.get("Hangup-Cause")
            error_cause = cause if isinstance(cause, str) else None
            for future in channel.values():
                if not future.done():
                    future.set_exception(self._gone_error(uuid, error_cause))

    # -- commands ---------------------------------------------------------------------------

    def _not_connected(self) -> Exception:
        if not self._ever_connected:
            return UnconnectedError("not connected: call start() first")
        return self._lost_error("not connected (the command was not sent)", CommandStage.NOT_SENT)

    def _write(self, frame: bytes, *, early: bool = False) -> asyncio.Future[ESLEvent]:
        """Write one whole command and queue its reply slot, atomically (no await).

        ``early`` lets the engine's own handshake commands through before ``_ready``.
        """
        transport = self._transport
        if transport is None or transport.is_closing() or not (self._ready or early):
            raise self._not_connected()
        future: asyncio.Future[ESLEvent] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        transport.write(frame)
        return future

    async def _request(
        self, frame: bytes, verb: str, timeout: float | None, *, early: bool = False
    ) -> ESLEvent:
        tracer = tracing.tracer()
        if tracer is None:
            future = self._write(frame, early=early)
            if timeout is None:
                return await future
            return await wait_for(future, timeout)
        with tracer.start_as_current_span("send_command") as span:
            recording = span.is_recording()
            if recording:
                span.set_attribute("command.name", verb)
            future = self._write(frame, early=early)
            reply = await (future if timeout is None else wait_for(future, timeout))
            if recording:
                span.set_attribute("command.reply", _reply_text(reply))
            return reply

    async def send(self, command: str, *, timeout: float | None = None) -> ESLEvent:
        """Send a one-line command; return its command/reply or api/response.

        A ``-ERR`` reply is returned, not raised. CR, LF or an empty command raise ValueError
        before anything is written. ``timeout`` raises ``asyncio.TimeoutError``; the
        reply, when it comes, is then dropped.
        """
        frame = commands.encode_command(command)
        return await self._request(frame, commands.verb(command), timeout)

    async def api(self, command: str, *, timeout: float | None = None) -> str:
        """Run ``api <command>``; return its output (a ``-ERR ...`` output is returned)."""
        reply = await self.send(f"api {command}", timeout=timeout)
        if reply.kind == KIND_API_RESPONSE:
            return reply.body or ""
        return _reply_text(reply)

    async def bgapi(
        self, command: str, *, job_uuid: str | None = None, timeout: float | None = None
    ) -> ESLEvent:
        """Run ``bgapi <command>`` and return its BACKGROUND_JOB event (output in ``.body``).

        The Job-UUID is chosen here and sent with the command, so the result is matched
        even if the job ends before its ``+OK`` reply is read. BACKGROUND_JOB is subscribed
        (once, ledgered); if filters are active a ``Job-UUID`` filter lets the result
        through and is removed afterwards. A ``-ERR`` reply is returned as is.
        """
        job = job_uuid or str(uuid4())
        frame = commands.encode_bgapi(command, job)
        if job in self._jobs:
            raise ValueError(f"a job with Job-UUID {job} is already pending")
        if timeout is None:
            return await self._bgapi(frame, job)
        return await wait_for(self._bgapi(frame, job), timeout)

    async def _bgapi(self, frame: bytes, job: str) -> ESLEvent:
        await self.subscribe("BACKGROUND_JOB")
        filtered = self.has_filters
        if filtered:
            await self.add_filter("Job-UUID", job)
        future: asyncio.Future[ESLEvent] = asyncio.get_running_loop().create_future()
        self._jobs[job] = future
        try:
            reply = await self._request(frame, "bgapi", None)
            if not is_ok(reply):
                return reply
            return await future
        finally:
            if self._jobs.get(job) is future:
                del self._jobs[job]
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: it was raised above or is moot
            else:
                future.cancel()
            if filtered:
                await self._release_filter("Job-UUID", job)

    async def sendmsg(
        self,
        command: str,
        application: str | None = None,
        data: str | None = None,
        lock: bool = False,
        uuid: str | None = None,
        event_uuid: str | None = None,
        block: bool = False,
        headers: Mapping[str, object] | None = None,
        timeout: float | None = None,
    ) -> ESLEvent:
        """Send ``sendmsg`` to a channel; with ``block`` wait for the execution to end.

        ``block=True`` (execute only) returns the CHANNEL_EXECUTE_COMPLETE whose
        Application-UUID is this message's Event-UUID. If the channel hangs up first the
        class's "gone" error is raised (SessionGoneAway on a Session, ChannelError on an
        Inbound). ``timeout`` (the whole call) raises ``asyncio.TimeoutError``. A ``-ERR``
        reply is returned at once.
        """
        target = uuid if uuid is not None else self._own_channel()
        frame, app_uuid = commands.encode_sendmsg(
            command, application, data, lock=lock, uuid=uuid, event_uuid=event_uuid,
            headers=headers,
        )
        if not (block and app_uuid is not None):
            return await self._request(frame, "sendmsg", timeout)
        if timeout is None:
            return await self._sendmsg_block(frame, target, app_uuid)
        return await wait_for(self._sendmsg_block(frame, target, app_uuid), timeout)

    def _own_channel(self) -> str:
        """The channel a sendmsg without uuid targets: only a Session has one."""
        raise ValueError("sendmsg needs uuid= on an inbound connection")

    def _check_channel(self, uuid: str) -> None:
        """Raise before sending if the channel is known to be gone (Session overrides)."""

    async def _sendmsg_block(self, frame: bytes, uuid: str, app_uuid: str) -> ESLEvent:
        self._check_channel(uuid)
        await self.subscribe(*_BLOCK_EVENTS)
        filtered = self.has_filters and ("Unique-ID", uuid) not in self._filters
        if filtered:
            await self.add_filter("Unique-ID", uuid)
        future: asyncio.Future[ESLEvent] = asyncio.get_running_loop().create_future()
        try:
            # Again, with no await until the waiter is in place: the channel may have hung
            # up during those round trips, and a hangup only fails the waiters it finds.
            self._check_channel(uuid)
            channel = self._exec_waiters.setdefault(uuid, {})
            if app_uuid in channel:
                raise ValueError(f"an execution with Event-UUID {app_uuid} is already pending")
            channel[app_uuid] = future
            reply = await self._request(frame, "sendmsg", None)
            if not is_ok(reply):
                return reply
            return await future
        finally:
            channel = self._exec_waiters.get(uuid, {})
            if channel.get(app_uuid) is future:
                del channel[app_uuid]
                if not channel:
                    self._exec_waiters.pop(uuid, None)
            if future.done() and not future.cancelled():
                future.exception()
            else:
                future.cancel()
            if filtered:
                await self._release_filter("Unique-ID", uuid)

    # -- subscriptions and filters (the ledger) -------------------------------------------

    async def subscribe(self, *names: str) -> None:
        """Subscribe (``event plain``) to event names and CUSTOM subclasses; idempotent.

        Names already subscribed (or everything, after ``ALL``) are not sent again. The
        subscription is in the ledger, re-issued after a reconnect. A refusal raises
        GenesisError and leaves the ledger unchanged.
        """
        events, customs = commands.split_event_names(names)
        if "ALL" in events:
            events, customs = ["ALL"], []
        events = list(dict.fromkeys(events))
        customs = list(dict.fromkeys(customs))
        while True:
            if "ALL" in self._events:
                events, customs = ["ALL"], []
            joined = {self._inflight[k] for k in _ledger_keys(events, customs)
                      if k in self._inflight}
            new_events = [e for e in events if e not in self._events]
            new_customs = [c for c in customs if c not in self._customs]
            if new_events or new_customs:
                await self._subscribe(new_events, new_customs)
            if not joined:
                return
            # Another caller's request for some of these names is still unanswered: they
            # are subscribed only if it succeeds. Its outcome is read from the ledger
            # afterwards, and names it failed to add are requested again by this call.
            await asyncio.wait(joined)

    async def _subscribe(self, events: list[str], customs: list[str]) -> None:
        """Send one ``event plain`` for names not in the ledger; they are in it meanwhile."""
        frame = commands.encode_event_command(events, customs)
        self._events.update(events)
        self._customs.update(customs)
        keys = _ledger_keys(events, customs)
        done = self._begin_inflight(keys)
        try:
            reply = await self._request(frame, "event", None)
            if not is_ok(reply):
                raise GenesisError(f"subscription refused: {_reply_text(reply)}")
        except BaseException:
            self._events.difference_update(events)
            self._customs.difference_update(customs)
            raise
        finally:
            self._end_inflight(keys, done)

    def _begin_inflight(self, keys: Sequence[tuple[str, object]]) -> asyncio.Future[None]:
        """Note that a request adding ``keys`` to the ledger awaits its reply.

        The ledger holds them meanwhile, so a concurrent caller would see them and
        return at once, though the request may still fail (refused, or the connection
        lost): such a caller waits for the returned future instead (``subscribe``,
        ``add_filter``).
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._inflight[key] = done
        return done

    def _end_inflight(self, keys: Sequence[tuple[str, object]],
                      done: asyncio.Future[None]) -> None:
        for key in keys:
            if self._inflight.get(key) is done:
                del self._inflight[key]
        done.set_result(None)

    async def add_filter(self, header: str, value: str) -> None:
        """Add a ``filter``; reference counted, the wire command goes on the first add only."""
        frame = commands.encode_filter(header, value)
        key = (header, value)
        while ("filter", key) in self._inflight:
            # The first add's request is unanswered: wait for it, then count as its
            # caller would have (or send the filter, if that add failed).
            await asyncio.wait([self._inflight["filter", key]])
        count = self._filters.get(key, 0)
        self._filters[key] = count + 1
        if count:
            return
        inflight = [("filter", key)]
        done = self._begin_inflight(inflight)
        try:
            reply = await self._request(frame, "filter", None)
        except BaseException:
            self._forget_filter(key)
            raise
        finally:
            self._end_inflight(inflight, done)
        if not is_ok(reply):
            self._forget_filter(key)
            raise GenesisError(f"filter refused: {_reply_text(reply)}")

    async def remove_filter(self, header: str, value: str) -> None:
        """Drop one reference; ``filter delete`` goes on the wire when the last one goes."""
        if (header, value) not in self._filters:
            raise ValueError(f"no filter {header}={value} to remove")
        await self._release_filter(header, value)

    async def _release_filter(self, header: str, value: str) -> None:
        key = (header, value)
        if key not in self._filters or not self._forget_filter(key):
            return
        if not self.is_connected:
            return  # the ledger is updated; a reconnect will not re-add it
        frame = commands.encode_filter(header, value, delete=True)
        reply = await self._request(frame, "filter", None)
        if not is_ok(reply) and logger.isEnabledFor(logging.WARNING):
            logger.warning("filter delete %s refused: %s", header, _reply_text(reply))

    def _forget_filter(self, key: tuple[str, str]) -> bool:
        """Drop one reference; True when it was the last one."""
        count = self._filters[key] - 1
        if count:
            self._filters[key] = count
            return False
        del self._filters[key]
        return True

    def _ledger_frames(self) -> list[bytes]:
        """The commands that restore this connection's subscriptions and filters."""
        frames: list[bytes] = []
        if self._events or self._customs:
            events = ["ALL"] if "ALL" in self._events else sorted(self._events)
            customs = [] if "ALL" in self._events else sorted(self._customs)
            frames.append(commands.encode_event_command(events, customs))
        frames.extend(commands.encode_filter(h, v) for h, v in self._filters)
        return frames

    def _clear_ledger(self) -> None:
        self._events.clear()
        self._customs.clear()
        self._filters.clear()
