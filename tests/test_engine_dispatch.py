"""Dispatch over real TCP: ordering, channel routing, Consumer, filtrate, backpressure."""

from __future__ import annotations

import asyncio
import gc
import resource
import sys
from typing import Any

import pytest

from genesis.consumer import Consumer, filtrate
from genesis.inbound import Inbound
from genesis.protocol.parser import ESLEvent, Parser
from tests.esl_server import ESLServer, event_frame, event_frames, split_frames


async def test_sync_handlers_see_every_event_in_order(server: ESLServer) -> None:
    frames = event_frames()
    sequences: list[str] = []
    names: list[str] = []
    async with Inbound("127.0.0.1", server.port, timeout=2) as client:
        # Re-typed PRIVATE_COMMAND events repeat Event-Sequence: the first is the wire's.
        client.on("*", lambda ev: sequences.append(
            seq[0] if isinstance(seq := ev["Event-Sequence"], list) else seq))
        client.on("DTMF", lambda ev: names.append(ev["DTMF-Digit"]))
        await client.subscribe("ALL")
        server.broadcast(b"".join(frames))
        await server.wait_for(lambda: len(sequences) == len(frames))
    expected = []
    for frame in frames:
        seq = frame.split(b"\nEvent-Sequence: ", 1)[1].split(b"\n", 1)[0]
        expected.append(seq.decode())
    assert sequences == expected
    assert names.count("#") == 20 and len(names) == 100


class _ChunkWatch(Inbound):
    """Counts references to each read's bytes left behind once it was handled."""

    left = 0

    def data_received(self, data: bytes) -> None:
        before = sys.getrefcount(data)
        super().data_received(data)
        self.left += sys.getrefcount(data) - before


async def test_kept_events_do_not_keep_their_read(server: ESLServer) -> None:
    """Events are framed inside the read's bytes; those a handler keeps copy theirs out."""
    frames = event_frames()
    kept: list[ESLEvent] = []
    seen: list[int] = []
    async with _ChunkWatch("127.0.0.1", server.port, timeout=2) as client:
        client.on("*", lambda ev: (seen.append(1), len(seen) % 10 or kept.append(ev)))
        await client.subscribe("ALL")
        server.broadcast(b"".join(frames))
        await server.wait_for(lambda: len(seen) == len(frames))
        assert client.left == 0
    assert len(kept) == len(frames) // 10
    for event, frame in zip(kept, frames[9::10], strict=True):
        assert dict(event) == dict(Parser().feed(frame)[0])


async def test_channel_routing_does_not_hide_global(server: ESLServer) -> None:
    uuid = "9a78436f-9c2f-414d-80f7-7780cc244392"
    calls: list[tuple[str, str]] = []
    frames = [f for f in event_frames() if f"\nUnique-ID: {uuid}\n".encode() in f]
    async with Inbound("127.0.0.1", server.port, timeout=2) as client:
        await client.subscribe("ALL")

        def on_any(ev: ESLEvent) -> None:
            calls.append(("chan*", ev.name or ""))

        def on_state(ev: ESLEvent) -> None:
            calls.append(("chan", ev.name or ""))

        client.on("CHANNEL_STATE", lambda ev: calls.append(("global", ev["Unique-ID"])))
        client.on_channel(uuid, "*", on_any)
        client.on_channel(uuid, "CHANNEL_STATE", on_state)
        server.broadcast(b"".join(frames))
        await server.wait_for(lambda: sum(c[0] == "chan*" for c in calls) == len(frames))
        states = sum(1 for f in frames if b"\n\nEvent-Name: CHANNEL_STATE\n" in f)
        assert sum(c[0] == "chan" for c in calls) == states
        assert sum(c[0] == "global" and c[1] == uuid for c in calls) == states
        client.remove_channel(uuid, "*", on_any)
        client.remove_channel(uuid, "CHANNEL_STATE", on_state)
        assert client._dispatcher.channels == {}
        with pytest.raises(ValueError):
            client.remove_channel(uuid, "*", on_any)


async def test_handler_can_remove_itself_and_errors_do_not_kill(server: ESLServer) -> None:
    seen: list[str] = []
    async with Inbound("127.0.0.1", server.port, timeout=2) as client:
        await client.subscribe("ALL")

        def once(ev: ESLEvent) -> None:
            seen.append("once")
            client.remove("HEARTBEAT", once)

        def boom(ev: ESLEvent) -> None:
            raise RuntimeError("handler bug")

        client.on("HEARTBEAT", once)
        client.on("HEARTBEAT", boom)
        client.on("HEARTBEAT", lambda ev: seen.append("after"))
        beat = next(f for f in event_frames() if b"Event-Name: HEARTBEAT" in f)
        server.broadcast(beat * 3)
        await server.wait_for(lambda: seen.count("after") == 3)
        assert seen.count("once") == 1
        assert await client.api("echo alive", timeout=2) == "alive"


async def test_consumer_subscribes_exactly_and_filtrate_works(server: ESLServer) -> None:
    app = Consumer("127.0.0.1", server.port, timeout=2)
    answered: list[str] = []
    dtmf: list[str] = []
    regs: list[ESLEvent] = []

    @app.handle("CHANNEL_ANSWER")
    @filtrate("Call-Direction", "outbound")
    def on_answer(ev: ESLEvent) -> None:
        answered.append(ev["Unique-ID"])

    @app.handle("DTMF")
    @filtrate("DTMF-Digit", r"[0-9]", regex=True)
    async def on_dtmf(ev: ESLEvent) -> None:
        await asyncio.sleep(0)
        dtmf.append(ev["DTMF-Digit"])

    @app.handle("sofia::register")
    @filtrate("No-Such-Header")
    def never(ev: ESLEvent) -> None:
        regs.append(ev)

    assert app.subscriptions() == ["CHANNEL_ANSWER", "DTMF", "sofia::register"]
    runner = asyncio.ensure_future(app.start())
    await server.wait_for(lambda: any(c.startswith("event ") for c in server.commands()))
    assert [c for c in server.commands() if c.startswith("event")] == [
        "event plain CHANNEL_ANSWER DTMF CUSTOM sofia::register"]
    server.broadcast(b"".join(event_frames()))
    await server.wait_for(lambda: len(answered) == 20 and len(dtmf) == 80)
    assert regs == []
    t0 = asyncio.get_running_loop().time()
    await asyncio.wait_for(app.stop(), 2)
    await asyncio.wait_for(runner, 2)
    assert asyncio.get_running_loop().time() - t0 < 1


async def test_consumer_star_subscribes_all(server: ESLServer) -> None:
    app = Consumer("127.0.0.1", server.port, timeout=2)
    app.handle("*")(lambda ev: None)
    app.handle("DTMF")(lambda ev: None)
    runner = asyncio.ensure_future(app.start())
    await server.wait_for(lambda: any(c.startswith("event ") for c in server.commands()))
    assert [c for c in server.commands() if c.startswith("event")] == ["event plain ALL"]
    await app.stop()
    await asyncio.wait_for(runner, 2)


async def test_consumer_survives_server_restart(server: ESLServer) -> None:
    port = server.port
    got: list[str] = []
    gaps: list[Any] = []
    app = Consumer("127.0.0.1", port, timeout=1, reconnect_delay=0.05, on_gap=gaps.append)
    app.handle("HEARTBEAT")(lambda ev: got.append(ev["Event-Sequence"]))
    runner = asyncio.ensure_future(app.start())
    beat = next(f for f in event_frames() if b"Event-Name: HEARTBEAT" in f)
    await server.wait_for(lambda: any(c.startswith("event") for c in server.commands()))
    server.broadcast(beat)
    await server.wait_for(lambda: len(got) == 1)
    await server.stop()
    server2 = ESLServer()
    await server2.start(port)
    await server2.wait_for(lambda: "event plain HEARTBEAT" in server2.commands())
    server2.broadcast(beat)
    await server2.wait_for(lambda: len(got) == 2)
    assert len(gaps) == 1
    assert not runner.done()
    await app.stop()
    await asyncio.wait_for(runner, 2)
    await server2.stop()


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def test_slow_handlers_pause_reading_memory_flat_over_a_million_events() -> None:
    total = 1_000_000
    # A small but real event (corpus HEARTBEAT headers cut to the routing ones).
    block_events = 5000
    one = event_frame(b"Event-Name: HEARTBEAT\nEvent-Sequence: 1\nUnique-ID: x")
    block = one * block_events
    sent = 0

    async def blast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(b"Content-Type: auth/request\n\n")
        await reader.readuntil(b"\n\n")
        writer.write(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
        while sent < total:
            writer.write(block)
            sent += block_events
            await writer.drain()  # only as fast as the client reads
        await reader.read()

    srv = await asyncio.start_server(blast, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    handled = 0
    max_pending = 0
    max_age = 0.0

    client = Inbound("127.0.0.1", port, timeout=2, max_concurrency=8, max_pending=512)

    async def slow(ev: ESLEvent) -> None:
        nonlocal handled, max_pending, max_age
        if handled % 997 == 0:
            max_pending = max(max_pending, client.events_pending)
            max_age = max(max_age, client.oldest_event_age)
        await asyncio.sleep(0)
        handled += 1

    client.on("HEARTBEAT", slow)
    await client.start()
    gc.collect()
    rss_start = 0
    samples: list[int] = []

    async def watch() -> None:
        nonlocal rss_start
        while handled < total:
            await asyncio.sleep(0.05)
            if handled > total // 10 and not rss_start:
                rss_start = _rss_kib()
            elif rss_start:
                samples.append(_rss_kib())

    await asyncio.wait_for(asyncio.gather(watch()), 110)
    assert handled == total
    dispatcher = client._dispatcher
    assert dispatcher.pauses > 10  # reading paused again and again
    # Bounded: the high-water mark plus one received chunk of events.
    assert dispatcher.max_backlog < 512 + 256 * 1024 // len(one) + 1
    assert max_pending <= dispatcher.max_backlog + 8
    assert max_age > 0.0
    assert samples and max(samples) - rss_start < 20 * 1024, (rss_start, max(samples))
    await client.stop()
    srv.close()
    await srv.wait_closed()


def test_split_frames_covers_the_capture(corpus: Any) -> None:
    data = (corpus / "plain.bin").read_bytes()
    frames = split_frames(data)
    assert b"".join(frames) == data and len(frames) == 1444
