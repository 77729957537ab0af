"""Outbound mode: dialplan routes that hand calls to an Event Socket application."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from test_simulator_fidelity import STATE_HEADERS, header_sets
from test_simulator_support import Esl

from genesis.outbound import Outbound, Session
from genesis.protocol.parser import KIND_EVENT, ESLEvent, Parser
from genesis.testing import Channel, FreeSwitchSimulator

GOODBYE = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"


class App:
    """A raw outbound application server: each accepted connection becomes an Esl."""

    def __init__(self) -> None:
        self.sessions: asyncio.Queue[Esl] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> App:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.sessions.put_nowait(Esl(reader, writer))

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def session(self) -> Esl:
        return await asyncio.wait_for(self.sessions.get(), 5)


@pytest.fixture
async def app() -> AsyncIterator[App]:
    async with App() as server:
        yield server


def sendmsg(app: str, arg: str | None = None) -> dict[str, str]:
    headers = {"call-command": "execute", "execute-app-name": app, "event-lock": "true"}
    if arg is not None:
        headers["execute-app-arg"] = arg
    return headers



async def call_in_myevents(freeswitch: FreeSwitchSimulator, app: App) -> tuple[Channel, Esl]:
    """A call to 5000, routed to ``app``, and its session after ``connect`` and ``myevents``."""
    freeswitch.route("5000", socket=f"127.0.0.1:{app.port} async full")
    call = await freeswitch.place_call(destination="5000")
    session = await app.session()
    await session.send("connect")
    await session.send("myevents")
    return call, session

async def test_outbound_capture_replayed(
    corpus: Path, freeswitch: FreeSwitchSimulator, app: App
) -> None:
    """outbound_out.bin sent to the simulator gives outbound_in.bin's frames."""
    real = Parser().feed((corpus / "outbound_in.bin").read_bytes())
    freeswitch.playback_seconds = 0.05
    # As in the capture: a loopback call whose -b leg reaches the "socket" extension.
    freeswitch.route("socket", socket=f"127.0.0.1:{app.port} async full")
    control = await Esl.open(freeswitch)
    await control.send("bgapi originate loopback/socket &park()")
    session = await app.session()
    call = freeswitch.calls[0].peer
    assert call is not None and call.name == "loopback/socket-b"
    commands = [c for c in (corpus / "outbound_out.bin").read_bytes().split(b"\n\n\n")]
    head = commands[0].split(b"\n\n")  # connect, myevents, linger
    connect = await session.send(head[0].decode())
    assert (await session.send(head[1].decode()))["Reply-Text"] == "+OK Events Enabled"
    assert (await session.send(head[2].decode()))["Reply-Text"] == "+OK will linger"
    for block in (head[3], *commands[1:3]):
        lines = block.decode().strip().split("\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        assert (await session.send(lines[0], headers))["Reply-Text"] == "+OK"
    await session.wait_for(
        lambda f: f.get("Content-Disposition") == "linger", frames=True, timeout=5
    )
    assert (await session.send("exit"))["Reply-Text"] == "+OK bye"
    await session.closed()
    await asyncio.wait_for(call.done, 5)

    def shape(frames: list[ESLEvent]) -> tuple[list[str], list[str]]:
        events = [str(f.name) for f in frames if f.kind == KIND_EVENT]
        others = [f.content_type for f in frames if f.kind != KIND_EVENT]
        return events, others

    assert shape(session.frames) == shape(real)
    # Each event type carries the capture's header names (variables: a subset).
    real_sets = header_sets([f for f in real if f.kind == KIND_EVENT])
    for name, (variants, variables) in header_sets(session.events).items():
        for variant in variants:
            closest = min(real_sets[name][0], key=lambda v: len(v ^ variant))
            assert variant in real_sets[name][0], (name, variant - closest, closest - variant)
        assert variables <= real_sets[name][1], (name, variables - real_sets[name][1])
    # And the state headers' values, event for event.
    real_events = [f for f in real if f.kind == KIND_EVENT]
    for ours, theirs in zip(session.events, real_events, strict=True):
        pairs = [(h, ours.get(h), theirs.get(h)) for h in STATE_HEADERS]
        assert all(a == b for _, a, b in pairs), (ours.name, pairs)
    # The connect reply: one header block, CHANNEL_DATA first, the socket facts last.
    assert connect.content_type == "command/reply"
    assert next(iter(connect.keys())) == "Event-Name" and connect["Event-Name"] == "CHANNEL_DATA"
    assert list(connect.keys())[-4:] == ["Content-Type", "Reply-Text", "Socket-Mode", "Control"]
    assert connect["Reply-Text"] == "+OK\n"
    assert (connect["Socket-Mode"], connect["Control"]) == ("async", "full")
    assert connect["Unique-ID"] == call.uuid
    assert b"Reply-Text: %2BOK%0A\nSocket-Mode: async\nControl: full\n\n" in session.raw
    real_names = {n for n in real[0] if not n.startswith("variable_")}
    our_names = {n for n in connect if not n.startswith("variable_")}
    assert our_names == real_names
    notices = [f for f in session.frames if f.content_type == "text/disconnect-notice"]
    assert notices[0]["Content-Disposition"] == "linger"
    assert notices[0]["Controlled-Session-UUID"] == call.uuid
    assert notices[0]["Linger-Time"] == "-1"
    assert notices[1]["Content-Disposition"] == "disconnect" and notices[1].body == GOODBYE
    await control.close()


async def test_without_linger_the_hangup_disconnects(
    freeswitch: FreeSwitchSimulator, app: App
) -> None:
    call, session = await call_in_myevents(freeswitch, app)
    await session.send("sendmsg", {"call-command": "hangup", "hangup-cause": "USER_BUSY"})
    await session.closed()
    notice = session.frames[-1]
    assert notice.content_type == "text/disconnect-notice"
    assert notice["Content-Disposition"] == "disconnect"
    assert "CHANNEL_HANGUP_COMPLETE" not in [e.name for e in session.events]
    await asyncio.wait_for(call.done, 5)
    assert call.hangup_cause == "USER_BUSY"


async def test_static_mode_replies_after_the_execution(
    freeswitch: FreeSwitchSimulator, app: App
) -> None:
    freeswitch.file_durations["hold.wav"] = 0.3
    freeswitch.route("5000", socket=f"127.0.0.1:{app.port}")
    call = await freeswitch.place_call(destination="5000")
    session = await app.session()
    connect = await session.send("connect")
    assert (connect["Socket-Mode"], connect["Control"]) == ("static", "single-channel")
    await session.send("myevents")
    started = time.monotonic()
    reply = await session.send("sendmsg", sendmsg("playback", "hold.wav"))
    assert reply["Reply-Text"] == "+OK"
    assert time.monotonic() - started >= 0.3
    # Nothing was written while the execute ran: the reply, then its events.
    position = session.frames.index(reply)
    await session.event("CHANNEL_EXECUTE_COMPLETE")
    playback = [i for i, f in enumerate(session.frames) if f.get("Application") == "playback"]
    assert len(playback) == 2 and min(playback) > position
    assert "CHANNEL_PARK" not in [e.name for e in session.events]
    # single-channel: no api, event or linger without "full".
    for command in ("api status", "event plain ALL", "linger", "bgapi status"):
        assert (await session.send(command))["Reply-Text"] == "-ERR command not found"
    call.hangup()
    await session.closed()


async def test_full_control_allows_api(freeswitch: FreeSwitchSimulator, app: App) -> None:
    freeswitch.route("^50\\d\\d$", socket=f"127.0.0.1:{app.port} async full")
    call = await freeswitch.place_call(destination="5042")
    session = await app.session()
    await session.send("connect")
    assert (await session.api("uuid_exists " + call.uuid)) == "true"
    assert (await session.send("getvar socket_host"))["Reply-Text"] == "127.0.0.1"
    await session.send("exit")
    await session.closed()
    # The application left: the socket app returns and the dialplan runs out.
    await asyncio.wait_for(call.done, 5)
    assert call.hangup_cause == "NORMAL_CLEARING"


async def test_unreachable_socket_continues_dialplan(freeswitch: FreeSwitchSimulator) -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    freeswitch.route("5000", apps=[("socket", f"127.0.0.1:{port} async full"), "set after=1"])
    call = await freeswitch.place_call(destination="5000")
    await asyncio.wait_for(call.done, 10)
    assert freeswitch.stats["socket_failures"] == 1
    assert call.variables["after"] == "1"


async def run_with_outbound(
    freeswitch: FreeSwitchSimulator, handler: Callable[[Session], Awaitable[None]], **call: object
) -> None:
    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    try:
        port = server.addresses[0][1]
        freeswitch.route("5000", socket=f"127.0.0.1:{port} async full")
        channel = await freeswitch.place_call(destination="5000", **call)  # type: ignore[arg-type]
        await asyncio.wait_for(channel.done, 10)
    finally:
        await server.stop(timeout=2)


async def test_project_outbound_server_ivr(freeswitch: FreeSwitchSimulator) -> None:
    """The project's own Outbound drives a call: answer, menu with DTMF, playback, hangup."""
    freeswitch.playback_seconds = 0.02
    seen: dict[str, object] = {}

    async def ivr(session: Session) -> None:
        seen["uuid"] = session.uuid
        seen["destination"] = session.context.get("Caller-Destination-Number")
        await session.sendmsg("execute", "answer", block=True, timeout=5)
        done = await session.sendmsg(
            "execute",
            "play_and_get_digits",
            "1 1 3 2000 # menu.wav invalid.wav choice",
            block=True,
            timeout=5,
        )
        seen["complete"] = done.get("Application")
        seen["choice"] = done.get("variable_choice")
        await session.sendmsg("execute", "playback", "bye.wav", block=True, timeout=5)
        await session.sendmsg("hangup", data="NORMAL_CLEARING")

    await run_with_outbound(freeswitch, ivr, digits="2")
    assert seen == {
        "uuid": freeswitch.calls[0].uuid,
        "destination": "5000",
        "complete": "play_and_get_digits",
        "choice": "2",
    }
    # sendmsg hangup is a call-command, not an application.
    assert freeswitch.calls[0].applications == [
        "socket",
        "answer",
        "play_and_get_digits",
        "playback",
    ]
    assert freeswitch.calls[0].hangup_cause == "NORMAL_CLEARING"


async def test_project_outbound_bridge(freeswitch: FreeSwitchSimulator) -> None:
    freeswitch.endpoint("user/1001", answer_after=0.05, hangup_after=0.1)
    result: dict[str, object] = {}

    async def bridge(session: Session) -> None:
        await session.sendmsg("execute", "answer", block=True, timeout=5)
        done = await session.sendmsg("execute", "bridge", "user/1001", block=True, timeout=5)
        result["bridged_to"] = done.get("variable_last_bridge_to")
        await session.sendmsg("hangup")

    await run_with_outbound(freeswitch, bridge)
    callee = [c for c in freeswitch.calls if c.uuid != freeswitch.calls[0].uuid]
    assert result["bridged_to"] and isinstance(result["bridged_to"], str)
    assert callee == []  # legs created by bridge are not "calls"; the caller is
    assert freeswitch.stats["originated"] == 1


async def test_inbound_sendmsg_to_outbound_channel(
    freeswitch: FreeSwitchSimulator, app: App
) -> None:
    """Any channel uuid works for sendmsg, including one an outbound socket controls."""
    call, session = await call_in_myevents(freeswitch, app)
    control = await Esl.open(freeswitch)
    reply = await control.send(
        f"sendmsg {call.uuid}", {"call-command": "execute", "execute-app-name": "answer"}
    )
    assert reply["Reply-Text"] == "+OK"
    await session.event("CHANNEL_ANSWER")
    await control.api(f"uuid_kill {call.uuid}")
    await session.closed()
    await control.close()


async def test_linger_seconds_then_disconnect(freeswitch: FreeSwitchSimulator, app: App) -> None:
    call, session = await call_in_myevents(freeswitch, app)
    assert (await session.send("linger 1"))["Reply-Text"] == "+OK will linger 1 seconds"
    started = time.monotonic()
    await session.send("sendmsg", {"call-command": "hangup"})
    await session.event("CHANNEL_HANGUP_COMPLETE")
    await session.closed(timeout=5)
    assert time.monotonic() - started >= 1.0
    dispositions = [
        f.get("Content-Disposition")
        for f in session.frames
        if f.content_type == "text/disconnect-notice"
    ]
    assert dispositions == ["linger", "disconnect"]
    await asyncio.wait_for(call.done, 5)


async def test_place_call_without_route(freeswitch: FreeSwitchSimulator) -> None:
    call = await freeswitch.place_call(destination="9999")
    await asyncio.wait_for(call.done, 5)
    assert call.hangup_cause == "NO_ROUTE_DESTINATION"
    assert call.applications == []


async def test_application_leaving_hangs_up_unless_resume(
    freeswitch: FreeSwitchSimulator, app: App
) -> None:
    """Without ``resume`` the call ends with the application's connection, even from a
    park the application started; with it, the dialplan goes on after ``socket``."""
    freeswitch.route("5001", apps=[("socket", f"127.0.0.1:{app.port} async full"), "set after=1"])
    call, session = await call_in_myevents(freeswitch, app)
    await session.send("sendmsg", sendmsg("park"))
    await session.event("CHANNEL_EXECUTE")
    await session.close()
    await asyncio.wait_for(call.done, 5)
    assert call.hangup_cause == "NORMAL_CLEARING"

    call = await freeswitch.place_call(destination="5001")
    session = await app.session()
    await session.send("connect")
    assert (await session.send("resume"))["Reply-Text"] == "+OK"
    await session.send("sendmsg", sendmsg("park"))
    await session.close()
    await asyncio.wait_for(call.done, 5)
    assert call.variables["after"] == "1"
    assert call.applications == ["socket", "park", "set"]
