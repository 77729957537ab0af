"""One Event Socket connection of the simulator, inbound or outbound.

FreeSWITCH calls the server side of a connection a *listener*: it owns the connection's
subscriptions (event names, format, filters, ``myevents``), its event queue and, in
outbound mode, the channel the connection controls. Commands are handled one at a time
in arrival order, so replies leave in command order (the only correlation the protocol
has); while an ``api`` command runs nothing else is written on the connection, exactly
like FreeSWITCH's per-connection thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from typing import TYPE_CHECKING

from genesis._wait import wait_for
from genesis.outbound import MYEVENTS
from genesis.protocol.parser import encode_value
from genesis.testing.channels import Channel

if TYPE_CHECKING:
    from genesis.testing.server import Emitted, FreeSwitchSimulator

logger = logging.getLogger("genesis.testing")

GOODBYE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
REJECTION = b"Access Denied, go away.\n"

#: FreeSWITCH's reply line buffer is 512 bytes: longer Reply-Text values are cut.
_REPLY_MAX = 511
#: More consecutive dropped events than this and FreeSWITCH kills the listener.
_MAX_CONSECUTIVE_DROPS = 500
_MAX_COMMAND_BYTES = 1 << 20


class CommandFrame:
    """A command as a client sent it: the command line, its headers, its body."""

    __slots__ = ("body", "headers", "line")

    def __init__(self, line: str, headers: dict[str, str], body: str) -> None:
        self.line = line
        self.headers = headers
        self.body = body


async def read_command(reader: asyncio.StreamReader) -> CommandFrame | None:
    """Read one command (lines up to an empty line, then Content-Length bytes).

    Returns None at end of stream. Empty lines before a command are skipped, which is
    also how FreeSWITCH treats the stray blank lines some clients send.
    """
    lines: list[str] = []
    size = 0
    while True:
        raw = await reader.readline()
        if not raw:
            return None
        size += len(raw)
        if size > _MAX_COMMAND_BYTES:
            raise ValueError("command header block over 1 MiB")
        text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
        if not text:
            if lines:
                break
            continue
        lines.append(text)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    body = ""
    length = headers.get("Content-Length") or headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > 16 << 20:
            raise ValueError(f"bad Content-Length {length!r}")
        body = (await reader.readexactly(int(length))).decode("utf-8", "surrogateescape")
    return CommandFrame(lines[0], headers, body)


def reply(text: str, **extra: str) -> bytes:
    """A ``command/reply`` frame."""
    out = f"Content-Type: command/reply\nReply-Text: {text[:_REPLY_MAX]}\n"
    for name, value in extra.items():
        out += f"{name.replace('_', '-')}: {value}\n"
    return (out + "\n").encode()


def api_response(body: str) -> bytes:
    data = body.encode("utf-8", "surrogateescape")
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(data) + data


class Filter:
    """One ``filter <Header> <value>``: equality ignoring case, or ``/regex/``."""

    __slots__ = ("header", "pattern", "value")

    def __init__(self, header: str, value: str) -> None:
        self.header = header
        self.value = value
        self.pattern: re.Pattern[str] | None = None
        if len(value) > 1 and value.startswith("/") and value.endswith("/"):
            self.pattern = re.compile(value[1:-1])

    def matches(self, actual: str) -> bool:
        if self.pattern is not None:
            return self.pattern.search(actual) is not None
        return actual.lower() == self.value.lower()


class Listener:
    """The server side of one Event Socket connection."""

    def __init__(
        self,
        sim: FreeSwitchSimulator,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        channel: Channel | None = None,
        asynchronous: bool = True,
        full: bool = True,
    ) -> None:
        self.sim = sim
        self.reader = reader
        self.writer = writer
        self.peer = writer.get_extra_info("peername")
        self.outbound = channel is not None
        self.channel = channel
        self.asynchronous = asynchronous
        self.full = full
        self.authenticated = self.outbound
        self.connected = not self.outbound  # outbound: after "connect"
        self.format = "plain"
        self.all_events = False
        self.events: set[str] = set()
        self.subclasses: set[str] = set()
        #: names taken out of ``ALL`` by nixevent
        self.nixed: set[str] = set()
        self.my_uuid: str | None = None
        self.filters: list[Filter] = []
        self.log_level: int | None = None
        self.linger: float | None = None
        self.resume = False
        self.closed = False
        # Nothing more is queued: the closing notice is (close()), and FreeSWITCH sends
        # nothing after it, so events and replies raised while it drains are dropped; or
        # the socket is gone (abort(), close() done). Set whenever ``closed`` is.
        self._sealed = False
        #: outbound: the channel is gone or hung up without linger, its events stop here.
        self.detached = False
        self.subscribed = asyncio.Event()
        self._out: deque[tuple[bytes, bool]] = deque()
        self._events_queued = 0
        self._drops = 0
        self._holding: list[bytes] | None = None
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._writer_task: asyncio.Task[None] | None = None

    # -- subscription ---------------------------------------------------------------
    def wants(self, name: str) -> bool:
        """Could an event called ``name`` pass this connection's subscription?"""
        if self._sealed or not self.connected:
            return False
        if self.all_events:
            return name not in self.nixed
        return name in self.events or (name == "CUSTOM" and bool(self.subclasses))

    def accepts(self, event: Emitted) -> bool:
        """FreeSWITCH's delivery rule: subscribed name, myevents channel, then filters."""
        if self._sealed or not self.connected:
            return False
        if self.detached and self.channel is not None and event.channel_uuid == self.channel.uuid:
            return False
        name = event.name
        if name == "CUSTOM":
            if not (
                self.all_events or event.subclass in self.subclasses or "CUSTOM" in self.events
            ):
                return False
        elif not ((self.all_events and name not in self.nixed) or name in self.events):
            return False
        if self.my_uuid is not None and (
            event.channel_uuid != self.my_uuid or name not in MYEVENTS
        ):
            return False
        if self.filters:
            for flt in self.filters:
                value = event.header(flt.header)
                if value is not None and flt.matches(value):
                    return True
            return False
        return True

    def offer(self, event: Emitted) -> None:
        if not self.accepts(event):
            return
        frame = event.serialized(self.format)
        if self._holding is not None:
            self._holding.append(frame)
            return
        if self._events_queued >= self.sim.max_queue:
            # FreeSWITCH drops what a slow reader cannot take, then gives up on it.
            self._drops += 1
            self.sim.stats["events_dropped"] += 1
            if self._drops > _MAX_CONSECUTIVE_DROPS:
                logger.warning("killed listener %s because of lost events", self.peer)
                self.sim.stats["listeners_killed"] += 1
                self.abort()
            return
        self._drops = 0
        self._events_queued += 1
        self.write(frame, event=True)

    # -- writing ----------------------------------------------------------------------
    def write(self, frame: bytes, *, event: bool = False) -> None:
        if self._sealed:
            return
        self._out.append((frame, event))
        self._drained.clear()
        self._wake.set()

    def start_writer(self) -> None:
        self._writer_task = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        faults = self.sim.faults
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._out:
                    if faults.stall_seconds:
                        stall, faults.stall_seconds = faults.stall_seconds, 0.0
                        await asyncio.sleep(stall)
                    batch: list[bytes] = []
                    while self._out and len(batch) < 512:
                        frame, is_event = self._out.popleft()
                        if is_event:
                            self._events_queued -= 1
                        batch.append(frame)
                    if faults.garbage_bytes is not None:
                        garbage, faults.garbage_bytes = faults.garbage_bytes, None
                        batch.insert(0, garbage)
                    if faults.cut_next_frame:
                        faults.cut_next_frame = False
                        self.writer.write(batch[0][: max(1, len(batch[0]) // 2)])
                        self.abort(flush=True)
                        return
                    self.writer.write(b"".join(batch))
                    await self.writer.drain()
                if not self._out:
                    self._drained.set()
                if self.closed:
                    return
        except (ConnectionError, OSError):
            self.abort()
        finally:
            self._drained.set()

    async def flush(self) -> None:
        """Wait until everything queued so far is on the wire."""
        while not self._drained.is_set() and not self.closed:
            await self._drained.wait()

    def abort(self, *, flush: bool = False) -> None:
        """Close now, dropping what is unsent (``flush``: after what is written)."""
        if self.closed:
            return
        self.closed = self._sealed = True
        self._wake.set()
        self._drained.set()
        if flush:
            self.writer.close()
        else:
            self.writer.transport.abort()

    async def close(self, notice: bytes | None = None) -> None:
        """Write ``notice`` after everything queued, then close the socket."""
        if self._sealed:
            return
        if notice is not None:
            self.write(notice)
        self._sealed = True
        await self.flush()
        self.closed = True
        self._wake.set()
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    def disconnect_notice(self, *, linger: bool = False) -> bytes:
        lines = ["Content-Type: text/disconnect-notice"]
        if self.channel is not None:
            lines.append(f"Controlled-Session-UUID: {self.channel.uuid}")
            lines.append(f"Content-Disposition: {'linger' if linger else 'disconnect'}")
        if linger:
            assert self.channel is not None
            lines.append(f"Channel-Name: {self.channel.name}")
            lines.append(f"Linger-Time: {int(self.linger) if self.linger else -1}")
            lines.append("Content-Length: 0")
            return ("\n".join(lines) + "\n\n").encode()
        lines.append(f"Content-Length: {len(GOODBYE)}")
        return ("\n".join(lines) + "\n\n").encode() + GOODBYE

    # -- the connection's life ------------------------------------------------------
    async def serve(self) -> None:
        """Read and run commands until the client leaves or the connection is closed."""
        self.start_writer()
        try:
            if not self.outbound:
                self.write(b"Content-Type: auth/request\n\n")
            while not self.closed:
                try:
                    if not self.authenticated:
                        frame = await wait_for(
                            read_command(self.reader), self.sim.auth_timeout
                        )
                    else:
                        frame = await read_command(self.reader)
                except asyncio.TimeoutError:
                    await self.close(self.disconnect_notice())
                    return
                except (ValueError, asyncio.IncompleteReadError) as exc:
                    logger.warning("closing %s: unreadable command: %s", self.peer, exc)
                    await self.close(self.disconnect_notice())
                    return
                if frame is None:
                    return
                self.sim.stats["commands"] += 1
                await self.sim.commands.run(self, frame)
        except (ConnectionError, OSError):
            pass
        except Exception:
            logger.exception("closing %s: command failed", self.peer)
            await self.close(self.disconnect_notice())
        finally:
            self.abort()
            if self._writer_task is not None:
                self._writer_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer_task
            self.sim.listener_gone(self)

    async def send_reply(self, frame: bytes) -> None:
        """Queue a reply, applying the reply faults (delay, drop) if armed."""
        faults = self.sim.faults
        if faults.replies_to_drop > 0:
            faults.replies_to_drop -= 1
            return
        if faults.reply_delay:
            await asyncio.sleep(faults.reply_delay)
        self.write(frame)

    def hold_events(self) -> None:
        self._holding = []

    def release_events(self) -> None:
        held, self._holding = self._holding, None
        for frame in held or ():
            self._events_queued += 1
            self.write(frame, event=True)

    # -- outbound -------------------------------------------------------------------------
    def connect_reply(self) -> bytes:
        """The outbound ``connect`` reply: the channel's data as one header block."""
        channel = self.channel
        assert channel is not None
        headers = self.sim.identity.common("CHANNEL_DATA")
        channel.profile.headers("Channel", headers, index=True)
        channel.data(headers, with_variables=True)
        headers["Content-Type"] = "command/reply"
        headers["Reply-Text"] = "+OK\n"
        headers["Socket-Mode"] = "async" if self.asynchronous else "static"
        headers["Control"] = "full" if self.full else "single-channel"
        text = "".join(f"{name}: {encode_value(value)}\n" for name, value in headers.items())
        return (text + "\n").encode("utf-8", "surrogateescape")

    def on_channel_hangup(self, channel: Channel) -> None:
        if self.linger is None and not self.closed:
            # Without linger FreeSWITCH discards what is queued and says goodbye.
            self.detached = True
            self._out = deque(item for item in self._out if not item[1])
            self._events_queued = 0
            asyncio.get_running_loop().create_task(self.close(self.disconnect_notice()))

    def on_channel_gone(self, channel: Channel) -> None:
        # The session is being destroyed: its later events (CHANNEL_DESTROY) never reach
        # the socket that controlled it.
        self.detached = True
        if self.linger is None or self.closed:
            return
        self.write(self.disconnect_notice(linger=True))
        if self.linger > 0:
            asyncio.get_running_loop().call_later(
                self.linger,
                lambda: asyncio.ensure_future(self.close(self.disconnect_notice())),
            )
