"""``Channel``: one call leg, driven over an Inbound connection or an outbound Session.

Three rules of the Event Socket shape this class:

* ``api originate`` runs in the server's connection thread: nothing else moves on that
  connection until the call is answered or fails. So :meth:`Channel.create` uses
  ``bgapi originate`` with a uuid chosen here (``origination_uuid``), routes the leg's
  events by that uuid *before* sending, and many legs ring at once on one connection.
  A failure is reported by whichever comes first, the leg's CHANNEL_HANGUP or the job's
  ``-ERR <CAUSE>`` body, and raised at once as :class:`ChannelError` with the cause.
* ``sendmsg`` without a uuid targets the connection's own channel (outbound mode). Only
  the Session's own channel may use that form; every other leg is addressed as
  ``sendmsg <uuid>``, or a ring group cleaning up losing legs would hang up the caller.
* Once a connection has any ``filter``, only matching events arrive. A leg created on a
  filtered connection (an outbound session filters on its own Unique-ID) adds a
  ``Unique-ID`` filter for itself, once, and removes it at CHANNEL_DESTROY so long-lived
  connections do not accumulate filters. An unfiltered connection gets no filter: the
  first filter would hide every other event.

State and context come only from events whose Unique-ID is this leg's (the engine routes
them by uuid), so DTMF and waits never see another channel's events.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import sys
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from genesis import tracing
from genesis._wait import wait_for
from genesis.exceptions import ChannelError, ChannelNotFound, SessionGoneAway, TimeoutError
from genesis.types import ChannelState

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from genesis.protocol.base import Protocol as ESLProtocol
    from genesis.protocol.parser import ESLEvent

logger = logging.getLogger(__name__)

T = TypeVar("T")
DTMFHandler = Callable[[str], Any]

#: What a Channel needs delivered.
CHANNEL_EVENTS = (
    "CHANNEL_CREATE",
    "CHANNEL_STATE",
    "CHANNEL_ANSWER",
    "CHANNEL_PARK",
    "CHANNEL_EXECUTE_COMPLETE",
    "CHANNEL_BRIDGE",
    "CHANNEL_UNBRIDGE",
    "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE",
    "CHANNEL_DESTROY",
    "DTMF",
)
#: The originate variables a caller may not override: Channel relies on both.
RESERVED_VARIABLES = frozenset({"origination_uuid", "return_ring_ready"})
_VARIABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")
_HANGUP_EVENTS = frozenset({"CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY"})
# Events that carry the channel's full data (variable_* included): worth keeping as context.
_CONTEXT_EVENTS = frozenset({"CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_PARK"})
# FreeSWITCH's channel states are not a line, whatever their numbers. A leg goes NEW, INIT,
# ROUTING, then moves among these in any order and as often as its dialplan, transfers and
# bridges take it (real 1.10.12 legs: an originated one rings in CONSUME_MEDIA, then
# EXECUTE; uuid_bridge takes it through HIBERNATE, RESET, SOFT_EXECUTE, then
# EXCHANGE_MEDIA or CONSUME_MEDIA; uuid_park sets PARK; a transfer goes back to ROUTING),
# and ends HANGUP, REPORTING, DESTROY.
_EXECUTION_STATES = frozenset(
    {
        ChannelState.SOFT_EXECUTE,
        ChannelState.EXECUTE,
        ChannelState.EXCHANGE_MEDIA,
        ChannelState.PARK,
        ChannelState.CONSUME_MEDIA,
        ChannelState.HIBERNATE,
        ChannelState.RESET,
    }
)
# The forward progression; NONE (not known yet) has passed nothing.
_PHASE = {
    ChannelState.NEW: 0,
    ChannelState.INIT: 1,
    ChannelState.ROUTING: 2,
    **dict.fromkeys(_EXECUTION_STATES, 3),
    ChannelState.HANGUP: 4,
    ChannelState.REPORTING: 5,
    ChannelState.DESTROY: 6,
}


def _phase(state: ChannelState) -> int:
    return _PHASE.get(state, -1)


class _SessionLike(Protocol):
    """What Channel uses of an outbound Session beyond the base Protocol."""

    @property
    def uuid(self) -> str | None: ...

    @property
    def context(self) -> Mapping[str, Any]: ...


def escape_variable(value: object) -> str:
    """Quote a value for an originate ``{name=value,...}`` block.

    FreeSWITCH splits the block on commas (``\\,`` keeps one), splits the command on
    spaces unless single-quoted, and ends the block at the matching brace whatever the
    quoting (``switch_find_end_paren`` only counts braces); so commas and quotes are
    backslash-escaped, values with spaces or braces are single-quoted, and unbalanced
    braces, which no escape can protect, raise ValueError like line breaks (a command
    cannot hold one).
    """
    # Python's True/False would reach FreeSWITCH's switch_true() as unknown words.
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError(f"originate variable values cannot contain line breaks: {text!r}")
    depth = 0
    for char in text:
        depth += (char == "{") - (char == "}")
        if depth < 0:
            break
    if depth:
        raise ValueError(f"unbalanced braces in an originate variable value: {text!r}")
    escaped = text.replace("\\", "\\\\").replace(",", "\\,").replace("'", "\\'")
    if not escaped or any(c in escaped for c in " \t{}[]<>"):
        return f"'{escaped}'"
    return escaped


def build_dial_string(uuid: str, dial_path: str, variables: Mapping[str, object] | None) -> str:
    """``{origination_uuid=…,return_ring_ready=true,<user vars>}<dial_path> &park()``."""
    parts = [f"origination_uuid={uuid}", "return_ring_ready=true"]
    parts.extend(_user_variables(dial_path, variables, warn=True))
    return "{" + ",".join(parts) + "}" + dial_path + " &park()"


def check_dial(dial_path: str, variables: Mapping[str, object] | None) -> None:
    """Raise the ValueError :func:`build_dial_string` would raise, if any."""
    _user_variables(dial_path, variables, warn=False)


def _user_variables(
    dial_path: str, variables: Mapping[str, object] | None, *, warn: bool
) -> list[str]:
    if not dial_path or any(c.isspace() for c in dial_path):
        raise ValueError(f"dial path must be non-empty and contain no whitespace: {dial_path!r}")
    parts = []
    for name, value in (variables or {}).items():
        if not _VARIABLE_NAME.match(name):
            raise ValueError(f"invalid channel variable name: {name!r}")
        if name.lower() in RESERVED_VARIABLES:
            if warn:
                logger.warning("originate variable %r is set by Channel.create; ignored", name)
            continue
        parts.append(f"{name}={escape_variable(value)}")
    return parts


def _header(event: ESLEvent, name: str) -> str | None:
    value = event.get(name)
    if isinstance(value, list):
        return str(value[-1]) if value else None
    return None if value is None else str(value)


class Channel:
    """A call leg. Build one with :meth:`create` (new leg) or :meth:`from_session`."""

    def __init__(
        self,
        protocol: ESLProtocol,
        uuid: str,
        dial_path: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self.protocol = protocol
        self.uuid = uuid
        self.dial_path = dial_path
        self.context: dict[str, Any] = dict(context) if context else {}
        self.digits: str | None = None
        self.hangup_cause: str | None = None
        self._state = ChannelState.NONE
        # Every state the leg was seen in: an execution state is reached once visited.
        self._visited: set[ChannelState] = set()
        self._answered = False
        self._hungup = False
        self._created_at = time.monotonic()
        self._answered_at: float | None = None
        # The session's own channel is the only one addressed by a uuid-less sendmsg.
        self._own = getattr(protocol, "uuid", None) == uuid
        self._filtered = False
        self._attached = False
        self._abandoned = False
        self._kill_sent = False
        self._seen_any = False
        self._ended = False
        self._waiters: list[tuple[Callable[[ESLEvent], bool], asyncio.Future[ESLEvent | None]]] = []
        self._dtmf: list[tuple[str | None, DTMFHandler]] = []
        self._end_callbacks: list[Callable[[Channel], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"<Channel {self.uuid} {self.dial_path or ''} {self._state.name}>"

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_session(cls, session: _SessionLike) -> Channel:
        """The outbound session's own channel: operations use the session's sendmsg."""
        if session.uuid is None:
            raise ValueError("the session has no channel yet: it is not connected")
        context = session.context
        channel = cls(session, session.uuid, None, context)  # type: ignore[arg-type]
        state = context.get("Channel-State")
        if isinstance(state, str):
            channel._enter_reported(state)
        channel._answered = context.get("Answer-State") == "answered"
        channel._attach_routing()
        return channel

    @classmethod
    async def create(
        cls,
        protocol: ESLProtocol,
        dial_path: str,
        variables: Mapping[str, object] | None = None,
        *,
        timeout: float | None = None,
        on_end: Callable[[Channel], None] | None = None,
    ) -> Channel:
        """Originate a parked leg to ``dial_path`` without blocking the connection.

        Returns once FreeSWITCH reports the leg ringing (``return_ring_ready``) or
        answered. A failed originate raises :class:`ChannelError` whose ``cause`` is the
        hangup cause, as soon as FreeSWITCH reports it. ``timeout`` bounds the wait
        (``genesis.exceptions.TimeoutError``); on timeout or cancellation the leg, if it
        came up at all, is hung up. ``on_end(channel)`` is called once when the leg ends,
        even if this call raised (a load balancer counts the leg until then).
        """
        uuid = str(uuidlib.uuid4())
        channel = cls(protocol, uuid, dial_path)
        if on_end is not None:
            channel._end_callbacks.append(on_end)
        try:
            command = "originate " + build_dial_string(uuid, dial_path, variables)
        except ValueError:
            channel._detach()  # no leg will ever exist: what counts it must stop now
            raise
        tracer = tracing.tracer()
        if tracer is None:
            await channel._originate(command, timeout)
            return channel
        with tracer.start_as_current_span("channel.create") as span:
            if span.is_recording():
                span.set_attributes(
                    {
                        "channel.dial_path": dial_path,
                        "channel.uuid": uuid,
                        "channel.has_variables": bool(variables),
                    }
                )
            await channel._originate(command, timeout)
        return channel

    async def _originate(self, command: str, timeout: float | None) -> None:
        protocol = self.protocol
        self._attach_routing()
        try:
            # Idempotent: the engine's ledger sends it once per connection.
            await protocol.subscribe(*CHANNEL_EVENTS)
            if protocol.has_filters:
                await protocol.add_filter("Unique-ID", self.uuid)
                self._filtered = True
            hungup = self._wait_for(lambda _e: False)
        except BaseException:
            self._detach()
            raise
        job = asyncio.ensure_future(protocol.bgapi(command))
        try:
            done, _ = await asyncio.wait(
                (job, hungup), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if job in done:
                result = job.result()
                body = (result.body or _header(result, "Reply-Text") or "").strip()
                if not body.startswith("+OK"):
                    cause = body[4:].strip() if body.startswith("-ERR") else body
                    raise ChannelError(f"originate {self.dial_path} failed: {body}", cause or None)
            elif hungup in done:
                raise ChannelError(
                    f"originate {self.dial_path} failed: {self.hangup_cause}", self.hangup_cause
                )
            else:
                raise TimeoutError(f"originate {self.dial_path}: no answer or ring in {timeout} s")
        except ChannelError:
            job.cancel()
            self._cancel_waiter(hungup)
            if not self._hungup:
                # The leg never existed (no route, bad gateway): nothing else will come.
                self._detach()
            raise
        except BaseException:
            # Timeout or cancellation while ringing: hang the leg up whenever it appears.
            self._cancel_waiter(hungup)
            self._abandon(job)
            raise
        self._cancel_waiter(hungup)

    def _abandon(self, job: asyncio.Future[ESLEvent]) -> None:
        self._abandoned = True
        self._spawn(self._kill_abandoned(job))

    async def _kill_abandoned(self, job: asyncio.Future[ESLEvent]) -> None:
        await self._kill()
        try:
            result = await job
        except Exception:
            result = None
        if result is not None and (result.body or "").startswith("+OK"):
            await self._kill()  # the leg came up after the first attempt
        elif not self._seen_any:
            self._detach()

    async def _kill(self) -> None:
        if self._hungup:
            return
        try:
            reply = await self.protocol.sendmsg(
                "hangup", None, "ORIGINATOR_CANCEL", uuid=self.uuid
            )
        except Exception:
            logger.warning("hanging up abandoned leg %s failed", self.uuid, exc_info=True)
            return
        if (_header(reply, "Reply-Text") or "").startswith("+OK"):
            self._kill_sent = True

    # -- event routing --------------------------------------------------------------------

    def _attach_routing(self) -> None:
        if not self._attached:
            self.protocol.on_channel(self.uuid, "*", self._on_event)
            self.protocol.watch_gaps(self._after_gap)
            self._attached = True

    def _detach(self) -> None:
        if self._attached:
            self._attached = False
            self.protocol.remove_channel(self.uuid, "*", self._on_event)
            self.protocol.unwatch_gaps(self._after_gap)
        if self._filtered:
            self._filtered = False
            if self.protocol.is_connected:
                self._spawn(self._remove_filter())
        for _predicate, future in self._waiters:
            if not future.done():
                future.set_result(None)
        self._waiters.clear()
        self._run_end_callbacks()

    def _after_gap(self, back: bool) -> None:
        """The connection lost events: this leg's hangup may have been one of them.

        Back after a reconnect, FreeSWITCH is asked whether the leg still exists; a leg
        gone in the gap ends here (``hangup_cause`` None: its hangup event was lost).
        A connection ended for good can report nothing more, so the leg is no longer
        followed: its waits end and its end callbacks run, so that what counts it (a
        load balancer) does not count it forever.
        """
        if not back:
            self._detach()
        elif not self._hungup:
            self._spawn(self._check_alive())

    async def _check_alive(self) -> None:
        try:
            exists = await self.protocol.api(f"uuid_exists {self.uuid}", timeout=10.0)
        except Exception as exc:
            # Lost again: the next reconnect asks again, the end of the connection detaches.
            logger.info("checking channel %s after a reconnect failed: %r", self.uuid, exc)
            return
        if exists.strip() == "false" and not self._hungup:
            self._mark_hungup(None)
            self._detach()

    async def _remove_filter(self) -> None:
        try:
            await self.protocol.remove_filter("Unique-ID", self.uuid)
        except Exception:
            logger.warning("removing the filter of channel %s failed", self.uuid, exc_info=True)

    def _on_event(self, event: ESLEvent) -> None:
        self._seen_any = True
        name = event.name
        if name == "CHANNEL_STATE":
            state = _header(event, "Channel-State")
            if state is not None:
                self._enter_reported(state)
        elif name == "CHANNEL_ANSWER":
            self._answered = True
            self._answered_at = time.monotonic()
        elif name == "DTMF":
            self._on_dtmf(event)
        if name in _CONTEXT_EVENTS:
            self.context.update(event.items())
        if self._abandoned and not self._kill_sent and not self._hungup:
            self._kill_sent = True
            self._spawn(self._kill())
        if name in _HANGUP_EVENTS:
            if not self._hungup:
                self._mark_hungup(_header(event, "Hangup-Cause"))
                self._run_end_callbacks()
            if name == "CHANNEL_DESTROY":
                self._state = ChannelState.DESTROY
                self._detach()
                return
        if self._waiters:
            self._wake(event)

    def _enter(self, state: ChannelState) -> None:
        self._state = state
        self._visited.add(state)

    def _enter_reported(self, name: str) -> None:
        """Enter the state a Channel-State header names. A name this release does not know
        (a later FreeSWITCH's) keeps the last known state: NONE would read as "not started"
        and make a wait for a state already passed wait again."""
        state = ChannelState.known(name)
        if state is None:
            logger.debug("channel %s: unknown Channel-State %r ignored", self.uuid, name)
            return
        self._enter(state)

    def _mark_hungup(self, cause: str | None) -> None:
        """The leg has hung up (``cause`` None when its hangup event was lost)."""
        self._hungup = True
        self.hangup_cause = cause
        if _phase(self._state) < _phase(ChannelState.HANGUP):
            self._state = ChannelState.HANGUP

    def _wake(self, event: ESLEvent) -> None:
        hung = self._hungup
        keep = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            if hung:
                future.set_result(None)  # a hangup ends every wait at once
            elif predicate(event):
                future.set_result(event)
            else:
                keep.append((predicate, future))
        self._waiters = keep

    def _wait_for(self, predicate: Callable[[ESLEvent], bool]) -> asyncio.Future[ESLEvent | None]:
        future: asyncio.Future[ESLEvent | None] = asyncio.get_running_loop().create_future()
        if self._hungup or self._ended:
            future.set_result(None)
        else:
            self._waiters.append((predicate, future))
        return future

    def _cancel_waiter(self, future: asyncio.Future[ESLEvent | None]) -> None:
        future.cancel()
        self._waiters = [w for w in self._waiters if w[1] is not future]

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def add_end_callback(self, callback: Callable[[Channel], None]) -> None:
        """Call ``callback(channel)`` once when the leg ends: at its hangup, or when it is
        known never to have existed (a failed originate). At once if it already ended."""
        if self._ended:
            callback(self)
        else:
            self._end_callbacks.append(callback)

    def _run_end_callbacks(self) -> None:
        self._ended = True
        callbacks, self._end_callbacks = self._end_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("end callback of channel %s failed", self.uuid)

    # -- state ------------------------------------------------------------------------------

    @property
    def state(self) -> ChannelState:
        """The last Channel-State FreeSWITCH reported for this leg."""
        return self._state

    @property
    def answered(self) -> bool:
        """True once CHANNEL_ANSWER was seen for this leg."""
        return self._answered

    @property
    def is_gone(self) -> bool:
        """True once the leg hung up."""
        return self._hungup

    # -- commands ---------------------------------------------------------------------------

    async def _execute(
        self, app: str, data: str | None, block: bool, timeout: float | None
    ) -> ESLEvent:
        return await self._sendmsg("execute", app, data, block, timeout)

    async def _sendmsg(
        self, command: str, app: str | None, data: str | None, block: bool, timeout: float | None
    ) -> ESLEvent:
        if self._own:
            return await self.protocol.sendmsg(command, app, data, block=block, timeout=timeout)
        try:
            reply = await self.protocol.sendmsg(
                command, app, data, uuid=self.uuid, block=block, timeout=timeout
            )
        except SessionGoneAway as exc:
            # Only the session's own channel going away is SessionGoneAway.
            raise ChannelError(f"channel {self.uuid} hung up", self.hangup_cause) from exc
        text = _header(reply, "Reply-Text") or ""
        if text.startswith("-ERR"):
            if "invalid session id" in text:
                raise ChannelNotFound(f"channel {self.uuid} does not exist: {text}", None)
            raise ChannelError(f"{command} {app or ''} on {self.uuid} failed: {text}", None)
        return reply

    async def _traced(
        self,
        name: str,
        attributes: Callable[[], dict[str, Any]],
        operation: Callable[[Span | None], Awaitable[T]],
    ) -> T:
        tracer = tracing.tracer()
        meters = instruments()
        if tracer is None and meters is None:
            return await operation(None)
        started = time.monotonic()
        outcome = "error"
        try:
            if tracer is None:
                result = await operation(None)
            else:
                with tracer.start_as_current_span(name) as span:
                    if span.is_recording():
                        span.set_attributes(attributes())
                        result = await operation(span)
                    else:
                        result = await operation(None)
            outcome = "ok"
            return result
        finally:
            if meters is not None:
                meters.record(name, outcome, time.monotonic() - started)

    async def answer(self) -> ESLEvent:
        """Answer the leg; returns the CHANNEL_EXECUTE_COMPLETE of ``answer``."""

        async def run(span: Span | None) -> ESLEvent:
            started = time.monotonic()
            try:
                result = await self._execute("answer", None, True, None)
            except BaseException:
                if span is not None:
                    span.set_attribute("channel.answer.success", False)
                raise
            if span is not None:
                span.set_attribute("channel.answer.success", True)
                span.set_attribute("channel.answer.duration", time.monotonic() - started)
            return result

        return await self._traced("channel.answer", self._base_attributes, run)

    async def park(self) -> ESLEvent:
        """Park the leg (it waits, answered or not, until told otherwise)."""

        async def run(_span: Span | None) -> ESLEvent:
            return await self._execute("park", None, False, None)

        return await self._traced("channel.park", self._base_attributes, run)

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> ESLEvent | None:
        """Hang the leg up with ``cause``; None if it had already hung up."""

        async def run(span: Span | None) -> ESLEvent | None:
            if span is not None:
                span.set_attribute("call.duration", time.monotonic() - self._created_at)
            if self._hungup:
                return None
            try:
                return await self._sendmsg("hangup", None, cause, False, None)
            except ChannelNotFound:
                if self._hungup:  # it hung up by itself while our command travelled
                    return None
                raise

        return await self._traced(
            "channel.hangup", lambda: {**self._base_attributes(), "hangup.cause": cause}, run
        )

    async def bridge(self, other: Channel | _SessionLike) -> ESLEvent:
        """Bridge this leg with another Channel or an outbound Session's channel."""
        other_uuid = other.uuid
        if other_uuid is None:
            raise ValueError("cannot bridge with a session that is not connected")

        async def run(span: Span | None) -> ESLEvent:
            reply = await self.protocol.send(f"api uuid_bridge {self.uuid} {other_uuid}")
            output = (reply.body or "").strip()
            ok = output.startswith("+OK")
            if span is not None:
                span.set_attribute("channel.bridge.success", ok)
            if not ok:
                raise ChannelError(f"bridge {self.uuid} with {other_uuid} failed: {output}", None)
            return reply

        return await self._traced(
            "channel.bridge",
            lambda: {**self._base_attributes(), "channel.other_uuid": other_uuid},
            run,
        )

    async def playback(
        self, path: str, block: bool = True, timeout: float | None = None
    ) -> ESLEvent:
        """Play ``path``; with ``block`` return its CHANNEL_EXECUTE_COMPLETE."""

        async def run(_span: Span | None) -> ESLEvent:
            return await self._execute("playback", path, block, timeout)

        return await self._traced(
            "channel.playback",
            lambda: {"channel.uuid": self.uuid, "playback.path": path, "playback.block": block},
            run,
        )

    async def say(
        self,
        text: str,
        module: str = "en",
        lang: str | None = None,
        kind: str = "NUMBER",
        method: str = "pronounced",
        gender: str = "FEMININE",
        block: bool = True,
        timeout: float | None = None,
    ) -> ESLEvent:
        """Run ``say`` (``<module>[:<lang>] <kind> <method> <gender> <text>``)."""
        target = f"{module}:{lang}" if lang else module
        data = f"{target} {kind} {method} {gender} {text}"

        async def run(_span: Span | None) -> ESLEvent:
            return await self._execute("say", data, block, timeout)

        return await self._traced(
            "channel.say",
            lambda: {
                "channel.uuid": self.uuid,
                "say.module": module,
                "say.kind": kind,
                "say.method": method,
            },
            run,
        )

    async def play_and_get_digits(
        self,
        tries: int,
        timeout: int,
        terminators: str,
        file: str,
        minimal: int = 0,
        maximum: int = 128,
        block: bool = True,
        regexp: str | None = None,
        var_name: str | None = None,
        invalid_file: str | None = None,
        digit_timeout: int | None = None,
        transfer_on_failure: str | None = None,
        sendmsg_timeout: float | None = None,
    ) -> ESLEvent:
        """Play ``file`` and collect digits; the digits land in :attr:`digits`.

        FreeSWITCH stores them in the channel variable ``var_name`` (one is chosen when
        none is given), which the CHANNEL_EXECUTE_COMPLETE carries as ``variable_<name>``.
        ``timeout`` and ``digit_timeout`` are milliseconds, as FreeSWITCH takes them.
        """
        name = var_name or "genesis_digits"
        args = [
            str(minimal),
            str(maximum),
            str(tries),
            str(timeout),
            terminators or "none",
            file,
            invalid_file or "silence_stream://250",
            name,
            regexp or "\\d+",
        ]
        if digit_timeout is not None or transfer_on_failure is not None:
            args.append(str(digit_timeout if digit_timeout is not None else timeout))
        if transfer_on_failure is not None:
            args.append(transfer_on_failure)

        async def run(_span: Span | None) -> ESLEvent:
            self.digits = None
            result = await self._execute(
                "play_and_get_digits", " ".join(args), block, sendmsg_timeout
            )
            if block:
                self.digits = _header(result, "variable_" + name)
            return result

        return await self._traced(
            "channel.play_and_get_digits",
            lambda: {
                "channel.uuid": self.uuid,
                "play_and_get_digits.file": file,
                "play_and_get_digits.tries": tries,
            },
            run,
        )

    async def log(self, level: str, message: str) -> ESLEvent:
        """Write ``message`` to FreeSWITCH's log at ``level`` (the ``log`` application)."""
        return await self._execute("log", f"{level} {message}", False, None)

    async def wait(self, target: ChannelState | str, timeout: float = 30.0) -> ESLEvent | None:
        """Wait until this leg reaches ``target`` (a ChannelState or its name) or fires
        the event named ``target`` (``"DTMF"``, ``"CHANNEL_BRIDGE"``…).

        FreeSWITCH's states are not ordered like their numbers, so "reached" means:

        * NEW, INIT, ROUTING, HANGUP, REPORTING, DESTROY: reached or passed along the
          forward progression NEW, INIT, ROUTING, (any execution state), HANGUP,
          REPORTING, DESTROY. An answered leg in EXECUTE has passed ROUTING.
        * The execution states SOFT_EXECUTE, EXECUTE, EXCHANGE_MEDIA, PARK,
          CONSUME_MEDIA, HIBERNATE, RESET: the leg has been in that very state (since this
          Channel followed it). A leg moves among them in any order (uuid_bridge takes it
          from EXECUTE through HIBERNATE, RESET and SOFT_EXECUTE), so being in a "higher"
          one does not count; having left it does not undo it (a bridged leg has reached
          EXECUTE). EXECUTE also needs the answer: a leg originated with
          ``return_ring_ready`` runs its application in CS_EXECUTE while still ringing.
          PARK is the state uuid_park sets; the ``park`` application (and the
          ``&park()`` of :meth:`create`) runs in CS_EXECUTE and fires CHANNEL_PARK.
        * Hangup is terminal: a leg that has hung up reaches nothing more, so its hangup
          ends every wait, returning None, and a later wait returns None at once,
          whatever the target (REPORTING and DESTROY included).

        Returns the event that reached the target (for an event target, that event), or
        None at once when it is already reached. NONE is no state a leg reaches
        (ValueError). ``timeout`` raises :class:`genesis.exceptions.TimeoutError`.
        """
        state = _as_state(target)
        if state is ChannelState.NONE:
            raise ValueError("ChannelState.NONE means 'not known yet': a leg never reaches it")
        label = state.name if state is not None else str(target)

        async def run(span: Span | None) -> ESLEvent | None:
            try:
                result = await self._wait(state, label, timeout)
            except TimeoutError:
                if span is not None:
                    span.set_attribute("wait.result", "timeout")
                raise
            if span is not None:
                outcome = "hangup" if self._hungup and state != ChannelState.HANGUP else "reached"
                span.set_attribute("wait.result", outcome)
            return result

        return await self._traced(
            "channel.wait",
            lambda: {
                "channel.uuid": self.uuid,
                "wait.target": label,
                "wait.timeout": timeout,
                "wait.type": "state" if state is not None else "event",
            },
            run,
        )

    async def _wait(
        self, state: ChannelState | None, event_name: str, timeout: float
    ) -> ESLEvent | None:
        if state is not None:
            if self._hungup or self._reached(state):
                return None
            future = self._wait_for(lambda _e: self._reached(state))
        else:
            if self._hungup:
                return None
            if event_name not in CHANNEL_EVENTS:
                await self.protocol.subscribe(event_name)
            future = self._wait_for(lambda e: e.name == event_name)
        try:
            return await wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"channel {self.uuid}: no {event_name} within {timeout} s") from None
        finally:
            self._cancel_waiter(future)

    def _reached(self, state: ChannelState) -> bool:
        if state in _EXECUTION_STATES:
            return state in self._visited and (state is not ChannelState.EXECUTE or self._answered)
        return _phase(self._state) >= _phase(state)

    # -- DTMF ---------------------------------------------------------------------------------

    def on_dtmf(self, digit: str | None = None) -> Callable[[DTMFHandler], DTMFHandler]:
        """Decorator: call the handler with each DTMF digit of this leg (or only ``digit``)."""

        def register(handler: DTMFHandler) -> DTMFHandler:
            self._dtmf.append((digit, handler))
            return handler

        return register

    def _on_dtmf(self, event: ESLEvent) -> None:
        digit = _header(event, "DTMF-Digit")
        if digit is None:
            return
        handlers = [h for d, h in self._dtmf if d is None or d == digit]
        tracer = tracing.tracer()
        if tracer is not None:
            with tracer.start_as_current_span("channel.dtmf.received") as span:
                if span.is_recording():
                    span.set_attributes(
                        {
                            "channel.uuid": self.uuid,
                            "dtmf.digit": digit,
                            "dtmf.handled": bool(handlers),
                        }
                    )
                self._run_dtmf(handlers, digit)
        elif handlers:
            self._run_dtmf(handlers, digit)

    def _run_dtmf(self, handlers: list[DTMFHandler], digit: str) -> None:
        for handler in handlers:
            try:
                result = handler(digit)
            except Exception:
                logger.exception("DTMF handler of channel %s failed", self.uuid)
                continue
            if inspect.isawaitable(result):
                self._spawn(_logged(result, self.uuid))

    def _base_attributes(self) -> dict[str, Any]:
        return {"channel.uuid": self.uuid, "channel.state": self._state.name}


async def _logged(awaitable: Awaitable[Any], uuid: str) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("DTMF handler of channel %s failed", uuid)


class Instruments:
    """The OpenTelemetry metrics of channel and ring group operations."""

    __slots__ = ("duration", "operations")

    def __init__(self, meter: Any) -> None:
        self.operations = meter.create_counter(
            "genesis.operations",
            unit="{operation}",
            description="Channel and ring group operations",
        )
        self.duration = meter.create_histogram(
            "genesis.operation.duration", unit="s", description="Duration of those operations"
        )

    def record(self, operation: str, outcome: str, seconds: float) -> None:
        attributes = {"operation": operation, "outcome": outcome}
        self.operations.add(1, attributes)
        self.duration.record(seconds, attributes)


class _MetricsState:
    provider: object = None
    instruments: Instruments | None = None


def instruments() -> Instruments | None:
    """The instruments if an SDK meter provider is installed, else None (one dict lookup).

    Like spans, metrics cost nothing unless the application configured the SDK: without
    ``opentelemetry.sdk.metrics`` imported no provider can be recording.
    """
    if "opentelemetry.sdk.metrics" not in sys.modules:
        return None
    from opentelemetry import metrics

    provider = metrics.get_meter_provider()
    if provider is _MetricsState.provider:
        return _MetricsState.instruments
    _MetricsState.provider = provider
    if isinstance(provider, metrics.NoOpMeterProvider) or not hasattr(provider, "shutdown"):
        _MetricsState.instruments = None  # the API's no-op or proxy provider
    else:
        from genesis import __version__

        _MetricsState.instruments = Instruments(provider.get_meter("genesis", __version__))
    return _MetricsState.instruments


def _as_state(target: ChannelState | str) -> ChannelState | None:
    if isinstance(target, ChannelState):
        return target
    key = target[3:] if target.startswith("CS_") else target
    return ChannelState[key] if key in ChannelState.__members__ else None


