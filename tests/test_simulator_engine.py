"""The project's call-control API (Inbound, Channel, RingGroup) against the simulator."""

from __future__ import annotations

import asyncio

import pytest

from genesis.channel import Channel
from genesis.exceptions import ChannelError
from genesis.group import RingGroup, RingMode
from genesis.inbound import Inbound
from genesis.testing import FreeSwitchSimulator
from tests.polling import until


async def test_channel_lifecycle(freeswitch: FreeSwitchSimulator) -> None:
    freeswitch.playback_seconds = 0.02
    freeswitch.endpoint("user/1001", answer_after=0.05, digits="5")
    freeswitch.endpoint("user/1002", answer_after=0.05)
    async with Inbound(*freeswitch.address, freeswitch.password, timeout=2) as client:
        a = await asyncio.wait_for(Channel.create(client, "user/1001"), 5)
        digits: list[str] = []
        a.on_dtmf()(digits.append)
        await a.wait("EXECUTE", timeout=3)
        done = await asyncio.wait_for(a.playback("welcome.wav"), 5)
        assert done["Application-Response"] == "FILE PLAYED"
        b = await asyncio.wait_for(Channel.create(client, "user/1002"), 5)
        await b.wait("EXECUTE", timeout=3)
        await asyncio.wait_for(a.bridge(b), 5)
        simulated = freeswitch.channels[a.uuid]
        await until(lambda: simulated.bridged_to == b.uuid, 5)
        await asyncio.wait_for(a.hangup(), 5)
        await until(lambda: not freeswitch.channels, 5)
        assert digits == ["5"]
        with pytest.raises(ChannelError) as failed:
            await asyncio.wait_for(Channel.create(client, "user/1999"), 5)
        assert failed.value.cause == "USER_NOT_REGISTERED"


async def test_ring_group_parallel(freeswitch: FreeSwitchSimulator) -> None:
    freeswitch.endpoint("user/1001", answer_after=0.3)
    freeswitch.endpoint("user/1002", answer_after=0.05)
    freeswitch.endpoint("user/1003", busy=True)
    async with Inbound(*freeswitch.address, freeswitch.password, timeout=2) as client:
        group = ["user/1001", "user/1002", "user/1003"]
        winner = await asyncio.wait_for(
            RingGroup.ring(client, group, RingMode.PARALLEL, timeout=3), 10
        )
        assert winner is not None and winner.dial_path == "user/1002"
        await until(lambda: len(freeswitch.channels) == 1, 5)
        assert next(iter(freeswitch.channels)) == winner.uuid
