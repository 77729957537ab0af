"""The Event Socket commands a client sends, and FreeSWITCH's replies to them.

Reply texts are FreeSWITCH's own (mod_event_socket 1.10): clients match on them
(``+OK accepted``, ``+OK Job-UUID: ...``, ``-ERR invalid``), so they are kept byte for
byte. Matching is case-insensitive on the command word, as in mod_event_socket.
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from typing import TYPE_CHECKING

from genesis.outbound import MYEVENTS
from genesis.testing.channels import Message
from genesis.testing.listener import (
    REJECTION,
    CommandFrame,
    Filter,
    Listener,
    api_response,
    reply,
)

if TYPE_CHECKING:
    from genesis.testing.server import FreeSwitchSimulator

_FORMATS = ("plain", "json", "xml")
_LEVELS = {
    "console": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "error": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
#: Commands an outbound connection without ``full`` may not use.
_FULL_ONLY = frozenset({"api", "bgapi", "event", "linger", "log", "sendevent", "nixevent"})


class Commands:
    """Runs one command for one listener and writes its reply."""

    def __init__(self, sim: FreeSwitchSimulator) -> None:
        self.sim = sim

    async def run(self, listener: Listener, frame: CommandFrame) -> None:
        word, _, rest = frame.line.strip().partition(" ")
        word = word.lower()
        rest = rest.strip()
        if not listener.authenticated:
            await self._unauthenticated(listener, word, rest)
            return
        if listener.outbound and not listener.connected:
            if word == "connect":
                listener.connected = True
                await listener.send_reply(listener.connect_reply())
            else:
                # Before connect an outbound socket only knows connect.
                await listener.send_reply(reply("-ERR command not found"))
            return
        if listener.outbound and not listener.full and word in _FULL_ONLY:
            await listener.send_reply(reply("-ERR command not found"))
            return
        handler = getattr(self, "cmd_" + word, None)
        if handler is None:
            await listener.send_reply(reply("-ERR command not found"))
            return
        await handler(listener, rest, frame)

    async def _unauthenticated(self, listener: Listener, word: str, rest: str) -> None:
        sim = self.sim
        if word == "auth":
            if rest == sim.password:
                listener.authenticated = True
                await listener.send_reply(reply("+OK accepted"))
                return
            sim.stats["auth_failures"] += 1
            await listener.send_reply(reply("-ERR invalid"))
            await listener.close(listener.disconnect_notice())
            return
        if word == "userauth":
            user, _, password = rest.rpartition(":")
            if user and password == sim.password:
                listener.authenticated = True
                await listener.send_reply(
                    reply(
                        "+OK accepted",
                        Allowed_Events="ALL",
                        Allowed_API="ALL",
                        Allowed_LOG="true",
                    )
                )
                return
            sim.stats["auth_failures"] += 1
            await listener.send_reply(reply("-ERR invalid"))
            await listener.close(listener.disconnect_notice())
            return
        await listener.send_reply(reply("-ERR command not found"))

    # -- api / bgapi ----------------------------------------------------------------------
    async def cmd_api(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        # mod_event_socket runs api in the connection's thread: nothing else is written
        # on this connection until the command returns (events wait, in order).
        self.sim.stats["api"] += 1
        listener.hold_events()
        try:
            output = await self.sim.apis.execute(rest, listener)
            await listener.send_reply(api_response(output))
        finally:
            listener.release_events()

    async def cmd_bgapi(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        self.sim.stats["bgapi"] += 1
        job_uuid = frame.headers.get("Job-UUID") or str(uuidlib.uuid4())
        await listener.send_reply(reply(f"+OK Job-UUID: {job_uuid}", Job_UUID=job_uuid))
        self.sim.spawn(self._background(rest, job_uuid, listener))

    async def _background(self, rest: str, job_uuid: str, listener: Listener) -> None:
        output = await self.sim.apis.execute(rest, None)
        command, _, argument = rest.partition(" ")
        headers = self.sim.identity.common("BACKGROUND_JOB")
        headers["Job-UUID"] = job_uuid
        headers["Job-Command"] = command
        if argument:
            headers["Job-Command-Arg"] = argument
        self.sim.emit(headers, body=output)

    # -- subscriptions -------------------------------------------------------------------
    async def cmd_event(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        tokens = rest.split()
        fmt = "plain"
        if tokens and tokens[0].lower() in _FORMATS:
            fmt = tokens.pop(0).lower()
        custom = False
        subclasses = 0
        for token in tokens:
            if custom:
                listener.subclasses.add(token)
                subclasses += 1
            elif token.upper() == "ALL":
                listener.all_events = True
            elif token.upper() == "CUSTOM":
                custom = True
            else:
                listener.events.add(token.upper())
                listener.nixed.discard(token.upper())
        if custom and not subclasses:
            # A bare CUSTOM takes every subclass.
            listener.events.add("CUSTOM")
        listener.format = fmt
        listener.subscribed.set()
        await listener.send_reply(reply(f"+OK event listener enabled {fmt}"))

    async def cmd_myevents(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        tokens = rest.split()
        fmt = "plain"
        if tokens and tokens[-1].lower() in _FORMATS:
            fmt = tokens.pop().lower()
        if tokens:
            target = tokens[0]
        elif listener.channel is not None:
            target = listener.channel.uuid
        else:
            await listener.send_reply(reply("-ERR invalid uuid"))
            return
        listener.my_uuid = target
        listener.events |= MYEVENTS
        listener.format = fmt
        listener.subscribed.set()
        await listener.send_reply(reply("+OK Events Enabled"))

    async def cmd_nixevent(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        custom = False
        for token in rest.split():
            if custom:
                listener.subclasses.discard(token)
            elif token.upper() == "ALL":
                listener.all_events = False
                listener.events.clear()
                listener.subclasses.clear()
                listener.nixed.clear()
            elif token.upper() == "CUSTOM":
                custom = True
            else:
                listener.events.discard(token.upper())
                if listener.all_events:
                    listener.nixed.add(token.upper())
        await listener.send_reply(reply("+OK events nixed"))

    async def cmd_noevents(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        listener.all_events = False
        listener.events.clear()
        listener.subclasses.clear()
        listener.nixed.clear()
        listener.my_uuid = None
        await listener.send_reply(reply("+OK no longer listening for events"))

    async def cmd_filter(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        header, _, value = rest.partition(" ")
        value = value.strip()
        if header.lower() == "delete":
            header, _, value = value.partition(" ")
            value = value.strip()
            if header.lower() == "all" or not header:
                listener.filters.clear()
                await listener.send_reply(reply("+OK filter deleted."))
                return
            listener.filters = [
                f
                for f in listener.filters
                if not (f.header == header and (not value or f.value == value))
            ]
            await listener.send_reply(reply(f"+OK filter deleted. [{header}]=[{value}]"))
            return
        if not header or not value:
            await listener.send_reply(reply("-ERR invalid syntax"))
            return
        listener.filters.append(Filter(header, value))
        await listener.send_reply(reply(f"+OK filter added. [{header}]=[{value}]"))

    async def cmd_divert_events(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        on = rest.strip().lower() == "on"
        await listener.send_reply(reply("+OK events diverted" if on else "+OK events not diverted"))

    # -- connection options ------------------------------------------------------------
    async def cmd_linger(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        seconds = rest.strip()
        if seconds.lstrip("-").isdigit() and int(seconds) > 0:
            listener.linger = float(seconds)
            await listener.send_reply(reply(f"+OK will linger {int(seconds)} seconds"))
        else:
            listener.linger = -1.0
            await listener.send_reply(reply("+OK will linger"))

    async def cmd_nolinger(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        listener.linger = None
        await listener.send_reply(reply("+OK will not linger"))

    async def cmd_log(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        text = rest.strip() or "debug"
        level = int(text) if text.isdigit() else _LEVELS.get(text.lower())
        if level is None:
            await listener.send_reply(reply("-ERR invalid log level"))
            return
        listener.log_level = level
        await listener.send_reply(reply(f"+OK log level {text} [{level}]"))

    async def cmd_nolog(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        listener.log_level = None
        await listener.send_reply(reply("+OK no longer logging"))

    async def cmd_resume(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        listener.resume = True
        await listener.send_reply(reply("+OK"))

    async def cmd_getvar(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        channel = listener.channel
        value = channel.variables.get(rest.strip()) if channel is not None else None
        if value is None:
            await listener.send_reply(reply("-ERR command not found"))
        else:
            await listener.send_reply(reply(value))

    async def cmd_exit(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        await listener.send_reply(reply("+OK bye"))
        await listener.close(listener.disconnect_notice())

    # -- sendevent / sendmsg ---------------------------------------------------------------
    async def cmd_sendevent(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        name = (rest.split() or ["CUSTOM"])[0].upper()
        event_uuid = frame.headers.get("Event-UUID") or str(uuidlib.uuid4())
        headers = self.sim.identity.common(name)
        for key, value in frame.headers.items():
            if key.lower() not in ("content-length", "event-name"):
                headers[key] = value
        headers["Event-UUID"] = event_uuid
        self.sim.emit(headers, body=frame.body or None, channel_uuid=headers.get("Unique-ID"))
        await listener.send_reply(reply(f"+OK {event_uuid}"))

    async def cmd_sendmsg(self, listener: Listener, rest: str, frame: CommandFrame) -> None:
        target_uuid = rest.strip() or frame.headers.get("Unique-ID", "")
        target = self.sim.channels.get(target_uuid) if target_uuid else listener.channel
        if target is None or (target.hungup and frame_command(frame) != "hangup"):
            await listener.send_reply(reply(f"-ERR invalid session id [{target_uuid}]"))
            return
        command = frame_command(frame)
        listener.subscribed.set()  # an outbound socket that acts is ready to be parked
        headers = {k.lower(): v for k, v in frame.headers.items()}
        if command == "execute":
            app = headers.get("execute-app-name", "")
            arg = headers.get("execute-app-arg", "")
            if not arg and frame.body:
                arg = frame.body
            loops = headers.get("loops", "1")
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            static = listener.outbound and not listener.asynchronous and target is listener.channel
            if static:
                # Static mode: the execute runs inline in the connection's thread, so its
                # reply and every event it fires wait until it ends.
                listener.hold_events()
            target.queue(
                Message(
                    app,
                    arg,
                    # FreeSWITCH makes up an Application-UUID when none is given.
                    event_uuid=frame.headers.get("Event-UUID") or str(uuidlib.uuid4()),
                    loops=int(loops) if loops.isdigit() else 1,
                    done=done,
                )
            )
            if static:
                try:
                    await done
                    await listener.send_reply(reply("+OK"))
                finally:
                    listener.release_events()
                return
        elif command == "hangup":
            target.hangup(headers.get("hangup-cause", "NORMAL_CLEARING") or "NORMAL_CLEARING")
        elif command in ("unicast", "nomedia", "xferext", "unhold", "hold"):
            pass
        else:
            await listener.send_reply(reply("-ERR invalid command"))
            return
        await listener.send_reply(reply("+OK"))


def frame_command(frame: CommandFrame) -> str:
    for key, value in frame.headers.items():
        if key.lower() == "call-command":
            return value.strip().lower()
    return ""


def rude_rejection() -> bytes:
    return b"Content-Type: text/rude-rejection\nContent-Length: %d\n\n" % len(REJECTION) + REJECTION


__all__ = ["Commands", "rude_rejection"]
