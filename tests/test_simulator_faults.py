"""Fault injection and load: what the simulator does to clients, and how they fare.

Faults are exercised against the project's own Inbound client (it must fail loudly and
in time, never hang) and against the raw test client (to see the bytes).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from test_simulator_support import Esl

from genesis.exceptions import ConnectionError as GenesisConnectionError
from genesis.exceptions import ConnectionLost
from genesis.inbound import Inbound
from genesis.protocol.parser import KIND_EVENT, Parser
from genesis.testing import FreeSwitchSimulator


async def test_close_mid_frame_fails_pending_command(freeswitch: FreeSwitchSimulator) -> None:
    async with Inbound(freeswitch.host, freeswitch.port, "ClueCon", timeout=2) as client:
        freeswitch.faults.close_mid_frame()
        with pytest.raises(GenesisConnectionError) as caught:
            await asyncio.wait_for(client.send("api status"), 5)
        assert isinstance(caught.value, ConnectionLost)


async def test_close_mid_frame_raw_bytes(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    freeswitch.faults.close_mid_frame()
    client.write(b"api version\n\n")
    await client.closed()
    assert client.parser.buffered > 0  # half a frame arrived, then the close
    assert client.replies.empty()


async def test_garbage_closes_client_loudly(freeswitch: FreeSwitchSimulator) -> None:
    async with Inbound(freeswitch.host, freeswitch.port, "ClueCon", timeout=2) as client:
        freeswitch.faults.garbage(b"this is not a header line\n\n")
        with pytest.raises(GenesisConnectionError):
            await asyncio.wait_for(client.send("api status"), 5)
        assert not client.is_connected


async def test_stall_delays_everything(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    freeswitch.faults.stall(0.3)
    started = time.monotonic()
    assert (await client.api("version")).startswith("FreeSWITCH")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    await client.api("version")
    assert time.monotonic() - started < 0.3  # one-shot
    await client.close()


async def test_delayed_and_dropped_replies(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    freeswitch.faults.delay_replies(0.2)
    started = time.monotonic()
    await client.api("version")
    assert time.monotonic() - started >= 0.2
    freeswitch.faults.clear()
    freeswitch.faults.drop_replies(1)
    client.write(b"api version\n\n")
    reply = await client.send("api uptime")
    assert (reply.body or "").isdigit()  # the first reply never came
    assert client.replies.empty()
    await client.close()


async def test_dropped_reply_times_out_inbound(freeswitch: FreeSwitchSimulator) -> None:
    async with Inbound(freeswitch.host, freeswitch.port, "ClueCon", timeout=2) as client:
        freeswitch.faults.drop_replies(1)
        with pytest.raises(asyncio.TimeoutError):
            await client.send("api status", timeout=0.3)


async def test_slow_reader_is_killed() -> None:
    """FreeSWITCH drops what a slow reader cannot take, then kills it after 500 drops."""
    async with FreeSwitchSimulator(max_queue=50) as fs:
        client = await Esl.open(fs)
        await client.send("event plain HEARTBEAT")
        for _ in range(600):  # no await: the connection cannot drain in between
            fs.emit(fs.identity.common("HEARTBEAT"))
        await client.closed()
        assert fs.stats["events_dropped"] == 501
        assert fs.stats["listeners_killed"] == 1
        assert len(client.events) <= 50


async def test_firehose_delivers_everything_in_order(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    await client.send("event plain ALL")
    sent = await asyncio.wait_for(freeswitch.firehose(5000), 30)
    assert sent == 5000
    events = await client.wait_for(lambda e: True, count=5000, timeout=30)
    numbers = [int(str(e["Event-Sequence"])) for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == 5000
    assert {e.name for e in events} >= {"CHANNEL_EXECUTE", "DTMF"}
    await client.close()


async def test_firehose_with_recorded_events(corpus: Path, freeswitch: FreeSwitchSimulator) -> None:
    parsed = [m for m in Parser().feed((corpus / "plain.bin").read_bytes()) if m.kind == KIND_EVENT]
    recorded: list[dict[str, str]] = [
        {k: v for k, v in e.items() if isinstance(v, str)} for e in parsed[:100]
    ]
    client = await Esl.open(freeswitch)
    await client.send("event json ALL")
    await freeswitch.firehose(300, recorded)
    events = await client.wait_for(lambda e: True, count=300)
    assert events[0]["Unique-ID"] == recorded[0]["Unique-ID"]
    assert events[100]["Event-Name"] == recorded[0]["Event-Name"]
    await client.close()


async def test_replay_capture_bytes(corpus: Path, freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    await asyncio.wait_for(freeswitch.replay((corpus / "plain.bin").read_bytes()), 30)
    await client.wait_for(lambda e: True, count=1347, timeout=30)
    await client.close()
