"""Outbound server and Session over real TCP, FreeSWITCH's side replaying outbound_in.bin."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from genesis.exceptions import SessionGoneAway
from genesis.outbound import Outbound, Session
from tests.esl_server import OUTBOUND_UUID, FakeCall
from tests.polling import until


async def call(port: int, host: str = "127.0.0.1") -> FakeCall:
    loop = asyncio.get_running_loop()
    _transport, fake = await loop.create_connection(FakeCall, host, port)
    return fake


async def serve(
    handler: Callable[[Session], Awaitable[Any]], **kwargs: Any
) -> tuple[Outbound, int]:
    server = Outbound(handler, kwargs.pop("host", "127.0.0.1"), kwargs.pop("port", 0), **kwargs)
    await server.start(block=False)
    return server, server.addresses[0][1]


async def test_handshake_context_and_blocking_execute() -> None:
    seen: dict[str, Any] = {}
    done = asyncio.Event()

    async def handler(session: Session) -> None:
        seen["uuid"] = session.uuid
        seen["context"] = session.context
        seen["peer"] = session.peer
        complete = await session.sendmsg("execute", "answer", lock=True, block=True, timeout=3)
        seen["complete"] = complete
        with pytest.raises(SessionGoneAway):
            await session.sendmsg("execute", "hangup", "NORMAL_CLEARING", block=True, timeout=3)
        seen["lingering"] = session.lingering
        with pytest.raises(SessionGoneAway):
            await session.sendmsg("execute", "playback", "x.wav", block=True, timeout=3)
        done.set()

    server, port = await serve(handler)
    fake = await call(port)
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.wait_for(fake.closed, 5)
    await server.stop()
    assert seen["uuid"] == OUTBOUND_UUID
    assert seen["context"]["Channel-Name"] == "loopback/socket-b"
    assert seen["context"]["Socket-Mode"] == "async" and seen["context"]["Reply-Text"] == "+OK\n"
    assert seen["peer"][0] == "127.0.0.1"
    complete = seen["complete"]
    assert complete.name == "CHANNEL_EXECUTE_COMPLETE" and complete["Application"] == "answer"
    assert seen["lingering"] is True
    handshake = fake.received[:4]
    assert handshake == [
        "connect", f"filter Unique-ID {OUTBOUND_UUID}", "event plain ALL", "linger"]
    answer = fake.received[4].split("\n")
    assert answer[:4] == ["sendmsg", "call-command: execute", "execute-app-name: answer",
                          answer[3]]
    assert answer[3].startswith("Event-UUID: ") and answer[4] == "event-lock: true"
    assert complete["Application-UUID"] == answer[3].split(": ")[1]
    hangup = fake.received[5].split("\n")
    assert "execute-app-arg: NORMAL_CLEARING" in hangup


async def test_events_false_linger_false_and_disconnect_notice() -> None:
    result: dict[str, Any] = {}

    async def handler(session: Session) -> None:
        reply = await session.sendmsg("execute", "hangup", "NORMAL_CLEARING", timeout=3)
        result["reply"] = reply["Reply-Text"]
        await asyncio.sleep(0.2)
        result["gone"] = session.gone

    server, port = await serve(handler, events=False, linger=False)
    fake = await call(port)
    await asyncio.wait_for(fake.closed, 5)
    await asyncio.sleep(0.05)
    await server.stop()
    assert fake.received[0] == "connect" and not any(
        r.startswith(("filter", "event", "linger")) for r in fake.received)
    assert result == {"reply": "+OK", "gone": True}


async def test_block_timeout_raises_asyncio_timeout() -> None:
    outcome: list[BaseException] = []

    async def handler(session: Session) -> None:
        try:
            await session.sendmsg("execute", "playback", "x.wav", block=True, timeout=0.2)
        except BaseException as exc:
            outcome.append(exc)

    server, port = await serve(handler)
    fake = await call(port)
    fake.complete_executes = False
    await asyncio.wait_for(fake.closed, 5)
    await server.stop()
    assert len(outcome) == 1 and isinstance(outcome[0], asyncio.TimeoutError)


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here")
async def test_reuse_port_lets_two_servers_share_a_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served: list[str] = []

    def make(tag: str) -> Callable[[Session], Awaitable[None]]:
        async def handler(session: Session) -> None:
            served.append(tag)

        return handler

    first = Outbound(make("a"), "127.0.0.1", port, reuse_port=True)
    second = Outbound(make("b"), "127.0.0.1", port, reuse_port=True)
    await first.start(block=False)
    await second.start(block=False)
    fakes = [await call(port) for _ in range(40)]
    await asyncio.wait_for(asyncio.gather(*(f.closed for f in fakes)), 10)
    await first.stop()
    await second.stop()
    assert len(served) == 40 and set(served) == {"a", "b"}


async def test_ipv6_listen() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"::1 not available: {exc}")
    peers: list[Any] = []

    async def handler(session: Session) -> None:
        peers.append(session.peer)

    server, port = await serve(handler, host="::1")
    fake = await call(port, "::1")
    await asyncio.wait_for(fake.closed, 5)
    await server.stop()
    assert peers and peers[0][0] == "::1"


async def test_stop_drains_then_cancels() -> None:
    finished: list[str] = []
    cancelled: list[str] = []
    started: list[Session] = []

    async def handler(session: Session) -> None:
        started.append(session)
        try:
            await asyncio.sleep(0.1 if len(started) == 1 else 30)
            finished.append("short")
        except asyncio.CancelledError:
            cancelled.append("long")
            raise

    server, port = await serve(handler)
    short = await call(port)
    await asyncio.sleep(0.05)
    long = await call(port)
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(server.stop(timeout=0.5), 3)
    assert loop.time() - t0 < 2
    assert finished == ["short"] and cancelled == ["long"]
    await asyncio.wait_for(asyncio.gather(short.closed, long.closed), 3)
    assert server.sessions == {}


async def test_start_block_returns_after_stop() -> None:
    async def handler(session: Session) -> None:
        return None

    server = Outbound(handler, "127.0.0.1", 0)
    runner = asyncio.ensure_future(server.start())
    await until(lambda: bool(server.addresses))
    await server.stop()
    await asyncio.wait_for(runner, 2)
