"""Dispatch over real TCP when events or handlers misbehave: the connection must survive.

A repeated Unique-ID (the parser's list for a repeated header) must route like a repeated
Event-Name, by its last value, and must never break the read it came in. A CancelledError
an async handler raises is that handler's failure, not the worker's cancellation: the
backlog must go on draining (reading paused by backpressure depends on it), while
Inbound.stop() must still cancel the workers promptly.
"""

from __future__ import annotations

import asyncio
import json
from time import monotonic

import pytest

import genesis.protocol.dispatch as dispatch_module
from genesis.inbound import Inbound
from genesis.protocol.parser import ESLEvent
from tests.esl_server import Connection, ESLServer, api_response, event_frame

FIRST = "3f2d1c0a-5b6e-4f70-8a91-b2c3d4e5f601"
LAST = "3f2d1c0a-5b6e-4f70-8a91-b2c3d4e5f602"


def _two_uuid_event(form: str) -> bytes:
    """A CHANNEL_STATE event carrying Unique-ID twice, FIRST then LAST."""
    if form == "plain":
        return event_frame(
            f"Event-Name: CHANNEL_STATE\nUnique-ID: {FIRST}\nUnique-ID: {LAST}".encode())
    body = json.dumps({"Event-Name": "CHANNEL_STATE", "Unique-ID": [FIRST, LAST]}).encode()
    return b"Content-Type: text/event-json\nContent-Length: %d\n\n" % len(body) + body


def _heartbeats(count: int) -> bytes:
    return b"".join(
        event_frame(f"Event-Name: HEARTBEAT\nEvent-Sequence: {seq}".encode())
        for seq in range(count))


async def _cancelled_await() -> None:
    """Await a task someone else cancelled: CancelledError raised inside the handler."""
    task = asyncio.get_running_loop().create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    task.cancel()
    await task


@pytest.mark.parametrize("form", ["plain", "json"])
async def test_repeated_unique_id_routes_to_last_and_keeps_the_read(
    server: ESLServer, form: str
) -> None:
    calls: list[tuple[str, str]] = []

    def answer(conn: Connection, text: str) -> bool:
        if not text.startswith("api status"):
            return False
        # One write: the event and the reply arrive in the same read.
        conn.write(_two_uuid_event(form) + api_response("UP 0 years\n"))
        return True

    server.on_command = answer
    async with Inbound("127.0.0.1", server.port, timeout=2) as client:
        client.on_channel(FIRST, "*", lambda ev: calls.append(("first", ev.name or "")))
        client.on_channel(LAST, "*", lambda ev: calls.append(("last", ev.name or "")))
        client.on_channel(LAST, "CHANNEL_STATE", lambda ev: calls.append(("last", "named")))
        assert await asyncio.wait_for(client.api("status"), 2) == "UP 0 years\n"
        assert calls == [("last", "named"), ("last", "CHANNEL_STATE")]  # by name, then "*"
        assert client.is_connected
        assert await asyncio.wait_for(client.api("echo alive"), 2) == "alive"


async def test_handler_cancelled_error_does_not_stall_backpressure(server: ESLServer) -> None:
    total = 12
    handled: list[int] = []
    async with Inbound("127.0.0.1", server.port, timeout=2,
                       max_concurrency=1, max_pending=4) as client:

        async def on_heartbeat(ev: ESLEvent) -> None:
            seq = int(ev["Event-Sequence"])
            handled.append(seq)
            if seq < 3:
                await _cancelled_await()
            await asyncio.sleep(0.005)

        client.on("HEARTBEAT", on_heartbeat)
        await asyncio.wait_for(client.subscribe("HEARTBEAT"), 2)
        server.broadcast(_heartbeats(total))
        await server.wait_for(lambda: client._dispatcher.pauses > 0, 2)
        assert await asyncio.wait_for(client.api("echo alive"), 3) == "alive"
        await server.wait_for(lambda: len(handled) == total, 3)
        assert handled == list(range(total))
        assert not client.reading_paused


@pytest.mark.parametrize("cancelling", ["native", "without cancelling() (3.10)"])
async def test_stop_still_cancels_a_handler_that_never_finishes(
    server: ESLServer, cancelling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if cancelling != "native":
        monkeypatch.setattr(dispatch_module, "_cancelling", lambda task: 0)
    started: list[int] = []
    cancelled: list[int] = []
    client = Inbound("127.0.0.1", server.port, timeout=2, max_concurrency=1)

    async def on_heartbeat(ev: ESLEvent) -> None:
        seq = int(ev["Event-Sequence"])
        if seq == 0:
            await _cancelled_await()  # the handler's own failure: the worker goes on
        started.append(seq)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(seq)
            raise

    client.on("HEARTBEAT", on_heartbeat)
    await asyncio.wait_for(client.start(), 2)
    try:
        await asyncio.wait_for(client.subscribe("HEARTBEAT"), 2)
        server.broadcast(_heartbeats(3))
        await server.wait_for(lambda: started == [1], 2)
    finally:
        began = monotonic()
        await asyncio.wait_for(client.stop(), 5)
    # Under close()'s own 1 s grace: the worker ended at the first cancel, it did not
    # take stop()'s cancel for a handler failure and go on to the next queued call.
    assert monotonic() - began < 0.9
    assert cancelled == [1] and started == [1]
    assert not client._dispatcher._workers
    assert client.events_pending == 0
