"""The simulator itself: a TCP server speaking FreeSWITCH's Event Socket protocol."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from genesis._wait import wait_for
from genesis.protocol.parser import serialize_event
from genesis.testing.apis import Apis
from genesis.testing.apps import standard_applications
from genesis.testing.channels import App, Channel, Hangup
from genesis.testing.commands import Commands, rude_rejection
from genesis.testing.events import VERSION, Headers, Identity
from genesis.testing.faults import Faults
from genesis.testing.listener import Listener

logger = logging.getLogger("genesis.testing")

_LEVEL_NAMES = ("CONSOLE", "ALERT", "CRIT", "ERR", "WARNING", "NOTICE", "INFO", "DEBUG")


@dataclass
class Endpoint:
    """How a destination behaves when the simulator dials it.

    ``answer_after`` seconds of ringing then answer; or ``busy`` (USER_BUSY at once);
    ``fail`` (that hangup cause at once); ``ring_forever`` (rings until the originate
    timeout: NO_ANSWER). Once answered, the far end presses ``digits`` (one every
    ``digit_interval`` seconds) and hangs up after ``hangup_after`` seconds if set.
    ``early_media`` sends pre-answer media (CHANNEL_PROGRESS_MEDIA) while ringing;
    ``ringing=False`` signals nothing before the answer (no 180, like a gateway without
    ringback), so ``return_ring_ready`` has nothing to return on.
    A ``dial_string`` starting with ``^`` is a regular expression: one declaration for
    many destinations (``^user/2\\d{3}$``).
    """

    dial_string: str
    answer_after: float = 0.0
    busy: bool = False
    ring_forever: bool = False
    fail: str | None = None
    digits: str = ""
    digit_interval: float = 0.05
    hangup_after: float | None = None
    early_media: bool = False
    ringing: bool = True
    pattern: re.Pattern[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.dial_string.startswith("^"):
            self.pattern = re.compile(self.dial_string)


@dataclass
class Route:
    """A dialplan extension: calls to ``extension`` in ``context`` run ``actions``.

    ``extension`` is an exact number, or a regular expression when it starts with ``^``
    (FreeSWITCH's ``destination_number`` condition).
    """

    extension: str
    actions: list[tuple[str, str]]
    context: str = "default"
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.extension.startswith("^"):
            self._pattern = re.compile(self.extension)

    def matches(self, destination: str, context: str) -> bool:
        if context != self.context:
            return False
        if self._pattern is not None:
            return self._pattern.search(destination) is not None
        return destination == self.extension


AfterAnswer = Callable[[Channel], Awaitable[None]]


def split_top_level(text: str, separator: str) -> list[str]:
    """Split a dial string on ``separator`` outside ``{}``, ``[]`` and ``<>``."""
    parts: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(text):
        if char in "{[<":
            depth += 1
        elif char in "}]>":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


class Emitted:
    """One fired event, serialized at most once per format however many listeners.

    ``appended`` is a second header set written after the first, duplicate names and
    all: how FreeSWITCH delivers a re-typed event (COMMAND then PRIVATE_COMMAND). Such an
    event routes by its last Event-Name.
    """

    __slots__ = ("_frames", "appended", "body", "channel_uuid", "headers", "name", "subclass")

    def __init__(
        self,
        headers: Headers,
        body: str | None,
        channel_uuid: str | None,
        appended: Headers | None = None,
    ) -> None:
        self.headers = headers
        self.body = body
        self.appended = appended
        self.name = (appended or {}).get("Event-Name") or headers["Event-Name"]
        self.subclass = headers.get("Event-Subclass")
        self.channel_uuid = channel_uuid
        self._frames: dict[str, bytes] = {}

    def serialized(self, fmt: str) -> bytes:
        frame = self._frames.get(fmt)
        if frame is None:
            frame = serialize_event(self.headers, fmt, self.body)
            if self.appended is not None:
                frame = _append_headers(frame, serialize_event(self.appended, fmt), fmt)
            self._frames[fmt] = frame
        return frame

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        if value is None and self.appended is not None:
            value = self.appended.get(name)
        return value


def _append_headers(first: bytes, second: bytes, fmt: str) -> bytes:
    """Join two body-less event frames into one whose headers are first's then second's."""
    one = first[first.index(b"\n\n") + 2 :]
    two = second[second.index(b"\n\n") + 2 :]
    if fmt == "json":
        inner = one[:-1] + b"," + two[1:]
    elif fmt == "xml":
        start = b"<headers>\n"
        inner = one[: one.rindex(b"  </headers>")] + two[two.index(start) + len(start) :]
    else:
        inner = one[:-1] + two
    content_type = first[first.index(b"Content-Type: ") : first.index(b"\n\n")]
    return b"Content-Length: %d\n%s\n\n%s" % (len(inner), content_type, inner)


def parse_dial_string(dial: str) -> tuple[dict[str, str], str]:
    """``{a=1,b=2}[c=3]user/1001`` -> ({a: 1, b: 2, c: 3}, "user/1001")."""
    variables: dict[str, str] = {}
    dial = dial.strip()
    while dial[:1] in ("{", "[", "<"):
        close = {"{": "}", "[": "]", "<": ">"}[dial[0]]
        end = dial.find(close)
        if end < 0:
            break
        for item in re.split(r",(?=[^,=]+=)", dial[1:end]):
            name, sep, value = item.partition("=")
            if sep:
                variables[name.strip()] = value.strip().strip("'")
        dial = dial[end + 1 :].strip()
    return variables, dial


class FreeSwitchSimulator:
    """A FreeSWITCH that speaks the real Event Socket protocol over TCP.

    See the package documentation (``genesis.testing``) for the scripting API.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        password: str = "ClueCon",
        *,
        heartbeat: float = 20.0,
        acl: Sequence[str] | None = None,
        auth_timeout: float = 25.0,
        max_queue: int = 100_000,
        playback_seconds: float = 0.2,
        hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.password = password
        self.heartbeat = heartbeat
        self.acl = [ipaddress.ip_network(net) for net in acl] if acl is not None else None
        self.auth_timeout = auth_timeout
        self.max_queue = max_queue
        #: default playback duration (seconds); ``file_durations`` overrides per file.
        self.playback_seconds = playback_seconds
        self.file_durations: dict[str, float] = {}
        #: time between CHANNEL_HANGUP and the teardown events (CS_HANGUP ... DESTROY).
        self.teardown_seconds = 0.05
        self.identity = Identity(hostname)
        self.faults = Faults()
        self.stats: Counter[str] = Counter()
        self.channels: dict[str, Channel] = {}
        #: every call placed (``place_call``) or originated, live or ended, in order.
        self.calls: list[Channel] = []
        self.listeners: set[Listener] = set()
        self.applications: dict[str, App] = standard_applications()
        self.apis = Apis(self)
        self.commands = Commands(self)
        self.global_variables: dict[str, str] = {
            "hostname": self.identity.hostname,
            "core_uuid": self.identity.core_uuid,
            "switchname": self.identity.hostname,
            "domain": host,
            "local_ip_v4": "127.0.0.1",
        }
        self.session_counter = 0
        self.endpoints: dict[str, Endpoint] = {}
        self.routes: list[Route] = [
            Route("park", [("answer", ""), ("park", "")]),
            Route("echo", [("answer", ""), ("echo", "")]),
        ]
        #: how undeclared destinations (other than ``user/``) behave.
        self.default_endpoint = Endpoint("*")
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._serving: set[asyncio.Task[Any]] = set()
        self._listening = 0

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> FreeSwitchSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.heartbeat > 0:
            self.spawn(self._heartbeats())

    async def stop(self) -> None:
        """Close every connection, cancel every call, stop listening."""
        if self._server is not None:
            self._server.close()
        for listener in list(self.listeners):
            listener.abort()
        if self._serving:
            # Closed sockets end their connection handlers; waiting (not cancelling)
            # lets asyncio's stream callbacks see them finish cleanly.
            await asyncio.wait(set(self._serving), timeout=2.0)
        for channel in list(self.channels.values()):
            await channel.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("simulator task failed", exc_info=task.exception())

    # -- connections -----------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        if self.acl is not None:
            address = ipaddress.ip_address(writer.get_extra_info("peername")[0])
            if not any(address in net for net in self.acl):
                self.stats["rejected"] += 1
                writer.write(rude_rejection())
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.drain()
                writer.close()
                return
        listener = Listener(self, reader, writer)
        self.listeners.add(listener)
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        try:
            await listener.serve()
        finally:
            if task is not None:
                self._serving.discard(task)

    def listener_gone(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        channel = listener.channel
        if channel is not None and not channel.hungup:
            # An outbound application that leaves hangs its call up, unless it said
            # ``resume``: then the dialplan goes on after the socket application.
            if listener.resume:
                channel.unpark(every=True)
            else:
                channel.hangup("NORMAL_CLEARING")

    def wants(self, name: str) -> bool:
        """True when some connection could receive an event called ``name``: events
        nobody can receive are never built (no headers, no serialization)."""
        return any(listener.wants(name) for listener in self.listeners)

    def emit(
        self,
        headers: Headers,
        body: str | None = None,
        channel_uuid: str | None = None,
        *,
        appended: Headers | None = None,
    ) -> None:
        """Fire an event to every connection that subscribed to it."""
        self.stats["events"] += 1
        event = Emitted(headers, body, channel_uuid, appended)
        for listener in list(self.listeners):
            listener.offer(event)

    def log(self, level: int, text: str, channel: Channel | None = None) -> None:
        """Send a ``log/data`` frame to connections whose ``log`` level admits it."""
        for listener in self.listeners:
            if listener.log_level is None or level > listener.log_level:
                continue
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            line = f"{stamp} [{_LEVEL_NAMES[level]}] mod_dptools.c:1764 {text}\n".encode()
            if channel is not None:
                line = channel.uuid.encode() + b" " + line
            head = (
                "Content-Type: log/data\n"
                f"Content-Length: {len(line)}\n"
                f"Log-Level: {level}\n"
                "Text-Channel: 3\n"
                "Log-File: mod_dptools.c\n"
                "Log-Func: log_function\n"
                "Log-Line: 1764\n"
                f"User-Data: {channel.uuid if channel is not None else ''}\n\n"
            )
            listener.write(head.encode() + line)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            ident = self.identity
            headers = ident.common("HEARTBEAT")
            headers.update(
                {
                    "Event-Info": "System Ready",
                    "Up-Time": ident.uptime_text(),
                    "FreeSWITCH-Version": VERSION,
                    "Uptime-msec": str(int((time.time() - ident.started) * 1000)),
                    "Session-Count": str(len(self.channels)),
                    "Max-Sessions": "1000",
                    "Session-Per-Sec": "200",
                    "Session-Per-Sec-Last": "0",
                    "Session-Per-Sec-Max": "0",
                    "Session-Per-Sec-FiveMin": "0",
                    "Session-Since-Startup": str(ident.sessions_since_startup),
                    "Session-Peak-Max": str(ident.session_peak),
                    "Session-Peak-FiveMin": str(ident.session_peak),
                    "Idle-CPU": "99.000000",
                }
            )
            self.emit(headers)

    # -- scripting ----------------------------------------------------------------------------
    def endpoint(
        self,
        dial_string: str,
        *,
        answer_after: float = 0.0,
        busy: bool = False,
        ring_forever: bool = False,
        fail: str | None = None,
        digits: str = "",
        digit_interval: float = 0.05,
        hangup_after: float | None = None,
        early_media: bool = False,
        ringing: bool = True,
    ) -> Endpoint:
        """Declare how ``dial_string`` (e.g. ``user/1001``) behaves; see :class:`Endpoint`.

        Declaring it again replaces the earlier behaviour.
        """
        if busy + ring_forever + (fail is not None) > 1:
            raise ValueError("an endpoint is busy, fails or rings forever: pick one")
        if answer_after < 0 or digit_interval < 0 or (hangup_after or 0) < 0:
            raise ValueError("endpoint delays must not be negative")
        endpoint = Endpoint(
            dial_string,
            answer_after=answer_after,
            busy=busy,
            ring_forever=ring_forever,
            fail=fail.upper() if fail else None,
            digits=digits,
            digit_interval=digit_interval,
            hangup_after=hangup_after,
            early_media=early_media,
            ringing=ringing,
        )
        self.endpoints[dial_string] = endpoint
        return endpoint

    def route(
        self,
        extension: str,
        *,
        socket: str | None = None,
        apps: Iterable[tuple[str, str] | str] = (),
        context: str = "default",
    ) -> Route:
        """Declare a dialplan extension: ``socket="127.0.0.1:9000 async full"`` sends the
        call to an outbound Event Socket application; ``apps`` runs applications, given
        as ``(name, argument)`` or ``"name argument"``. Later routes win."""
        actions: list[tuple[str, str]] = []
        for app in apps:
            if isinstance(app, str):
                name, _, arg = app.partition(" ")
                actions.append((name, arg))
            else:
                actions.append(app)
        if socket is not None:
            address = socket.split()[0] if socket.split() else ""
            port = address.rpartition(":")[2]
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"socket route needs 'host:port [async] [full]', got {socket!r}")
            actions.append(("socket", socket))
        route = Route(extension, actions, context)
        self.routes.insert(0, route)
        return route

    def find_endpoint(self, target: str) -> Endpoint | None:
        """The endpoint declared for ``target``: exactly, else the latest pattern."""
        endpoint = self.endpoints.get(target)
        if endpoint is not None:
            return endpoint
        for candidate in reversed(self.endpoints.values()):
            if candidate.pattern is not None and candidate.pattern.search(target):
                return candidate
        return None

    def find_route(self, destination: str, context: str) -> Route | None:
        for route in self.routes:
            if route.matches(destination, context):
                return route
        return None

    def channel_gone(self, channel: Channel) -> None:
        """A channel reached CS_REPORTING: forget it, tell its outbound connection."""
        self.channels.pop(channel.uuid, None)
        for listener in list(self.listeners):
            if listener.channel is channel:
                listener.on_channel_gone(channel)

    def _new_session(self, channel: Channel) -> None:
        ident = self.identity
        ident.sessions_since_startup += 1
        ident.session_peak = max(ident.session_peak, len(self.channels) + 1)

    async def place_call(
        self,
        destination: str,
        caller: str = "1000",
        *,
        caller_name: str | None = None,
        context: str = "default",
        digits: str = "",
        digit_interval: float = 0.05,
        hangup_after: float | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> Channel:
        """Start an inbound call from ``caller`` to ``destination`` through the dialplan.

        Once the call is answered the caller presses ``digits`` and, with
        ``hangup_after``, hangs up that many seconds after the answer. Returns the
        inbound channel (``await call.done`` waits for its end).
        """
        channel = Channel(
            self,
            name=f"sofia/internal/{caller}@{self.host}",
            direction="inbound",
            caller_id_name=caller if caller_name is None else caller_name,
            caller_id_number=caller,
            destination=destination,
            context=context,
            source="mod_sofia",
            variables=dict(variables or {}),
        )
        self.calls.append(channel)
        self._new_session(channel)

        async def body() -> None:
            channel.set_state("CS_INIT")
            channel.fire("CHANNEL_CREATE")
            await self._route(channel, destination, context, ringing=True)

        channel.start(body)
        self.spawn(self._far_end_after_answer(channel, digits, digit_interval, hangup_after))
        await asyncio.sleep(0)
        return channel

    async def _route(
        self, channel: Channel, destination: str, context: str, *, ringing: bool = False
    ) -> None:
        """CS_ROUTING, then the matching extension's actions in CS_EXECUTE.

        ``ringing``: an inbound call announces RINGING as routing starts (the call state
        event, already in CS_ROUTING, comes before the state event).
        """
        route = self.find_route(destination, context)
        if ringing:
            channel.state = "CS_ROUTING"
            channel.set_call_state("RINGING")
        channel.set_state("CS_ROUTING")
        if route is None:
            channel.hangup("NO_ROUTE_DESTINATION")
            return
        channel.hit_dialplan = True
        channel.set_state("CS_EXECUTE")
        await channel.run_dialplan(route.actions)

    async def _far_end_after_answer(
        self, channel: Channel, digits: str, interval: float, hangup_after: float | None
    ) -> None:
        with contextlib.suppress(Hangup):
            if not await channel.wait_answered():
                return
            answered = asyncio.get_running_loop().time()
            for digit in digits:
                await channel.sleep(interval)
                channel.receive_dtmf(digit)
            if hangup_after is not None:
                elapsed = asyncio.get_running_loop().time() - answered
                await channel.sleep(max(0.0, hangup_after - elapsed))
                channel.hangup("NORMAL_CLEARING")

    async def press_digits(self, channel: Channel, digits: str, duration_ms: int) -> None:
        for digit in digits:
            if channel.hungup:
                return
            channel.receive_dtmf(digit, duration_ms)
            await asyncio.sleep(0)

    # -- originate ------------------------------------------------------------------------
    async def originate(
        self,
        dial: str,
        *,
        apps: list[tuple[str, str]] | None = None,
        extension: str | None = None,
        context: str = "default",
        caller_id_name: str | None = None,
        caller_id_number: str | None = None,
        timeout: float | None = None,
    ) -> tuple[Channel | None, str]:
        """What ``originate`` does: dial, wait for the answer, then run ``apps`` (or
        route to ``extension``) on the answered leg. Returns (leg, "") or (None, cause)."""

        async def after_answer(leg: Channel) -> None:
            if apps is not None:
                leg.hit_dialplan = True
                leg.set_state("CS_EXECUTE")
                await leg.run_dialplan(apps)
            else:
                await self._route(leg, extension or "", context)

        leg, cause = await self.originate_leg(
            dial,
            timeout=timeout,
            caller_id_name=caller_id_name,
            caller_id_number=caller_id_number,
            after_answer=after_answer,
        )
        return leg, cause

    async def originate_leg(
        self,
        dial: str,
        *,
        originator: Channel | None = None,
        timeout: float | None = None,
        inherit: Mapping[str, str] | None = None,
        caller_id_name: str | None = None,
        caller_id_number: str | None = None,
        after_answer: AfterAnswer | None = None,
        created: Callable[[Channel], None] | None = None,
    ) -> tuple[Channel | None, str]:
        """Create and ring outgoing legs; (leg, "") once one answered, else (None, cause).

        ``dial`` may list several destinations: ``a,b`` rings them together, ``a|b`` one
        after another. ``after_answer(leg)`` runs on the leg's own executor once it
        answered; without it the leg waits (bridged) until it hangs up. ``created`` is
        told about every leg created.
        """
        variables, target = parse_dial_string(dial)
        if inherit:
            variables = {**inherit, **variables}
        options: dict[str, Any] = {
            "originator": originator,
            "timeout": timeout,
            "inherit": variables,
            "caller_id_name": caller_id_name,
            "caller_id_number": caller_id_number,
            "after_answer": after_answer,
        }
        sequential = split_top_level(target, "|")
        if len(sequential) > 1:
            # "a|b": try each in turn; the first to answer is the result.
            cause = "NO_ANSWER"
            for part in sequential:
                leg, cause = await self.originate_leg(part, **options)
                if leg is not None:
                    return leg, ""
            return None, cause
        simultaneous = split_top_level(target, ",")
        if len(simultaneous) > 1:
            return await self._originate_simultaneous(simultaneous, options)
        for name in ("leg_timeout", "originate_timeout"):
            if variables.get(name, "").isdigit():
                timeout = float(variables[name])
                break
        if timeout is None:
            timeout = 60.0
        cid_name = variables.get("origination_caller_id_name") or caller_id_name
        cid_number = variables.get("origination_caller_id_number") or caller_id_number
        if originator is not None:
            cid_name = cid_name or originator.profile.caller_id_name
            cid_number = cid_number or originator.profile.caller_id_number
        # FreeSWITCH's defaults: no caller id name, number 0000000000.
        cid_name = cid_name or ""
        cid_number = cid_number or "0000000000"
        leg_uuid = variables.get("origination_uuid")
        if target.startswith("error/"):
            return None, target[len("error/") :].upper()
        if target.startswith("loopback/"):
            return await self._originate_loopback(
                target, variables, leg_uuid, cid_name, cid_number, timeout, after_answer, created
            )
        endpoint = self.find_endpoint(target)
        if endpoint is None:
            if target.startswith("user/"):
                return None, "USER_NOT_REGISTERED"
            endpoint = self.default_endpoint
        number = target.rsplit("/", 1)[-1]
        name = f"sofia/internal/{number}@{self.host}" if target.startswith("user/") else target
        leg = Channel(
            self,
            name=name,
            direction="outbound",
            caller_id_name=cid_name,
            caller_id_number=cid_number,
            destination=number,
            source="mod_sofia",
            channel_uuid=leg_uuid,
            variables=variables,
            callee=("Outbound Call", number),
        )
        if originator is None:
            self.calls.append(leg)
        else:
            leg.other, leg.other_type = originator, "originator"
        if created is not None:
            created(leg)
        self.stats["originated"] += 1
        self._new_session(leg)
        result: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def body() -> None:
            try:
                leg.fire("CHANNEL_OUTGOING")
                leg.set_state("CS_INIT")
                leg.fire("CHANNEL_CREATE")
                leg.fire("CHANNEL_ORIGINATE")
                leg.set_state("CS_ROUTING")
                leg.set_state("CS_CONSUME_MEDIA")
                self.spawn(self._far_end(leg, endpoint))
                # return_ring_ready: originate succeeds as soon as the leg rings, and the
                # leg runs its application while still ringing. The originate timeout is
                # over then: the leg rings until answered or hung up, as on FreeSWITCH.
                ring_ready = variables.get("return_ring_ready", "").lower() == "true"
                if not await leg.wait_answered(timeout, ringing=ring_ready):
                    if not leg.hungup:
                        leg.hangup("NO_ANSWER")
                    result.set_result(leg.hangup_cause or "NORMAL_CLEARING")
                    return
                leg.variables["endpoint_disposition"] = "ANSWER" if leg.answered else "RING_READY"
                result.set_result("")
                if after_answer is not None:
                    await after_answer(leg)
                else:
                    await leg.serve_messages(asyncio.Event())
            finally:
                if not result.done():
                    result.set_result(leg.hangup_cause or "NORMAL_CLEARING")

        leg.start(body)
        cause = await asyncio.shield(result)
        return (None, cause) if cause else (leg, "")

    async def _originate_simultaneous(
        self, parts: list[str], options: dict[str, Any]
    ) -> tuple[Channel | None, str]:
        """ "a,b": ring every leg; the first to answer wins, the others are hung up
        with LOSE_RACE (what FreeSWITCH's originate does)."""
        after_answer = options["after_answer"]
        winner: list[Channel] = []
        legs: list[Channel] = []

        async def claim(leg: Channel) -> None:
            if winner:
                leg.hangup("LOSE_RACE")
                return
            winner.append(leg)
            for other in legs:
                if other is not leg and not other.hungup:
                    other.hangup("LOSE_RACE")
            if after_answer is not None:
                await after_answer(leg)
            else:
                await leg.serve_messages(asyncio.Event())

        def track(channel: Channel) -> None:
            legs.append(channel)

        attempts = [
            asyncio.ensure_future(
                self.originate_leg(part, **{**options, "after_answer": claim}, created=track)
            )
            for part in parts
        ]
        results = await asyncio.gather(*attempts)
        if winner:
            return winner[0], ""
        return None, results[-1][1] if results else "NO_ANSWER"

    async def _far_end(self, leg: Channel, endpoint: Endpoint) -> None:
        with contextlib.suppress(Hangup):
            await leg.sleep(0)
            if endpoint.busy:
                leg.hangup("USER_BUSY")
                return
            if endpoint.fail:
                leg.hangup(endpoint.fail)
                return
            if endpoint.ringing:
                leg.mark_ring_ready()
            if endpoint.early_media:
                leg.mark_pre_answered()
            if endpoint.ring_forever:
                return
            await leg.sleep(endpoint.answer_after)
            leg.mark_answered()
        await self._far_end_after_answer(
            leg, endpoint.digits, endpoint.digit_interval, endpoint.hangup_after
        )

    async def _originate_loopback(
        self,
        target: str,
        variables: dict[str, str],
        leg_uuid: str | None,
        cid_name: str,
        cid_number: str,
        timeout: float,
        after_answer: AfterAnswer | None,
        created: Callable[[Channel], None] | None,
    ) -> tuple[Channel | None, str]:
        """mod_loopback: an outbound ``-a`` leg and an inbound ``-b`` leg that runs the
        dialplan; answering, hanging up and DTMF cross from one half to the other."""
        parts = target.split("/")
        extension = parts[1] if len(parts) > 1 else ""
        context = parts[2] if len(parts) > 2 else "default"
        variables.setdefault("originate_early_media", "true")
        variables.setdefault("originate_endpoint", "loopback")
        a = Channel(
            self,
            name=f"loopback/{extension}-a",
            direction="outbound",
            caller_id_name=cid_name,
            caller_id_number=cid_number,
            destination=extension,
            context=context,
            channel_uuid=leg_uuid,
            callee=("Outbound Call", context),
        )
        b = Channel(
            self,
            name=f"loopback/{extension}-b",
            direction="inbound",
            caller_id_name=cid_name,
            caller_id_number=cid_number,
            destination=extension,
            context=context,
            callee=("Outbound Call", context),
            variables={
                name: value for name, value in variables.items() if name.startswith("origination")
            },
        )
        a.peer, b.peer = b, a
        if created is not None:
            created(a)
        b.variables["other_loopback_leg_uuid"] = a.uuid
        b.variables["loopback_leg"] = "B"
        self.calls.append(a)
        self.stats["originated"] += 1
        self._new_session(a)
        self._new_session(b)
        result: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def a_body() -> None:
            try:
                temporary = str(uuid.uuid4()) if leg_uuid else None
                a.fire_codecs(temporary or a.uuid, f"loopback/{extension}/{context}-a")
                if temporary:
                    a.fire("CHANNEL_UUID", {"Old-Unique-ID": temporary})
                # The dial string's variables land once the session has its uuid.
                a.variables["call_uuid"] = a.uuid
                a.variables.update(variables)
                a.variables["other_loopback_leg_uuid"] = b.uuid
                a.variables["loopback_leg"] = "A"
                a.fire("CHANNEL_OUTGOING")
                a.set_state("CS_INIT")
                a.fire("CHANNEL_CREATE")
                a.fire("CHANNEL_ORIGINATE")
                a.set_state("CS_ROUTING")
                a.set_state("CS_CONSUME_MEDIA")
                b.start(b_body)
                if not await a.wait_answered(timeout):
                    if not a.hungup:
                        a.hangup("NO_ANSWER")
                    result.set_result(a.hangup_cause or "NORMAL_CLEARING")
                    return
                a.variables["endpoint_disposition"] = "ANSWER"
                result.set_result("")
                if after_answer is not None:
                    await after_answer(a)
                else:
                    await a.serve_messages(asyncio.Event())
            finally:
                if not result.done():
                    result.set_result(a.hangup_cause or "NORMAL_CLEARING")

        async def b_body() -> None:
            b.hit_dialplan = True
            b.fire_codecs(b.uuid, b.name)
            b.set_state("CS_INIT")
            b.fire("CHANNEL_CREATE")
            await self._route(b, extension, context, ringing=True)

        a.start(a_body)
        cause = await asyncio.shield(result)
        return (None, cause) if cause else (a, "")

    # -- outbound mode ------------------------------------------------------------------------
    async def serve_outbound(
        self, channel: Channel, host: str, port: int, *, asynchronous: bool, full: bool
    ) -> None:
        """The ``socket`` application: connect, then hand the call to the application."""
        try:
            reader, writer = await wait_for(
                asyncio.open_connection(host, port, limit=1 << 20), 5.0
            )
        except (OSError, asyncio.TimeoutError) as exc:
            logger.warning("socket %s:%s failed: %s", host, port, exc)
            self.stats["socket_failures"] += 1
            return
        listener = Listener(
            self, reader, writer, channel=channel, asynchronous=asynchronous, full=full
        )
        self.listeners.add(listener)
        channel.listeners.append(listener.on_channel_hangup)
        serving = self.spawn(listener.serve())
        if asynchronous:
            # FreeSWITCH parks the call once the application is connected; waiting for
            # its first subscription keeps CHANNEL_PARK from racing ahead of it.
            subscribed = asyncio.ensure_future(listener.subscribed.wait())
            try:
                await asyncio.wait(
                    {subscribed, serving}, timeout=0.5, return_when="FIRST_COMPLETED"
                )
            finally:
                subscribed.cancel()
        if serving.done() or channel.hungup:
            return
        await channel.park(fire_events=asynchronous)

    # -- load ----------------------------------------------------------------------------------
    async def firehose(self, count: int, events: Iterable[Mapping[str, str]] | None = None) -> int:
        """Fire ``count`` events as fast as the subscribed clients read them.

        ``events`` (recorded header mappings) are replayed in a cycle with fresh
        Event-Sequence numbers; by default realistic channel events are generated.
        Returns the number of events fired.
        """
        templates = [dict(e) for e in events] if events is not None else self._templates()
        if not templates:
            return 0
        for index in range(count):
            headers = dict(templates[index % len(templates)])
            headers["Event-Sequence"] = str(self.identity.next_sequence())
            self.emit(headers, channel_uuid=headers.get("Unique-ID"))
            if index % 256 == 255:
                await self.drain()
        await self.drain()
        return count

    async def replay(self, data: bytes, chunk: int = 1 << 16) -> None:
        """Write recorded bytes (e.g. a capture of event frames) to every authenticated
        inbound connection, as fast as each reads."""
        targets = [lst for lst in self.listeners if lst.authenticated and not lst.outbound]
        for start in range(0, len(data), chunk):
            for listener in targets:
                listener.write(data[start : start + chunk])
            for listener in targets:
                await listener.flush()

    async def drain(self) -> None:
        """Wait until every connection's queued frames are on the wire."""
        for listener in list(self.listeners):
            await listener.flush()

    def _templates(self) -> list[dict[str, str]]:
        channel = Channel(
            self,
            name="sofia/internal/1000@127.0.0.1",
            direction="inbound",
            caller_id_name="1000",
            caller_id_number="1000",
            destination="5000",
            source="mod_sofia",
        )
        self.session_counter -= 1
        templates = []
        for name, state, extra in (
            ("CHANNEL_STATE", "CS_EXECUTE", {}),
            ("CHANNEL_EXECUTE", "CS_EXECUTE", {"Application": "playback"}),
            (
                "CHANNEL_EXECUTE_COMPLETE",
                "CS_EXECUTE",
                {"Application": "playback", "Application-Response": "FILE PLAYED"},
            ),
            (
                "DTMF",
                "CS_EXECUTE",
                {"DTMF-Digit": "#", "DTMF-Duration": "2000", "DTMF-Source": "UNKNOWN"},
            ),
        ):
            channel.state = state
            headers = self.identity.common(name)
            channel.data(headers, with_variables=name != "CHANNEL_STATE" and name != "DTMF")
            headers.update(extra)
            templates.append(headers)
        return templates
