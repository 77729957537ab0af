"""Legs followed across a lost connection, against the simulator.

A hangup that happens while the connection is down is never delivered. After a
reconnect FreeSWITCH is asked which legs still exist; once the connection has ended for
good, its legs are no longer followed. Either way a load balancer stops counting a leg
that nobody can see end, instead of counting it forever.
"""

from __future__ import annotations

import asyncio

import pytest

from genesis.channel import Channel
from genesis.group import InMemoryLoadBalancer, RingGroup, RingMode
from genesis.inbound import Gap, Inbound
from genesis.outbound import Outbound, Session
from genesis.testing import FreeSwitchSimulator
from genesis.types import ChannelState
from tests.polling import until

WAIT = 10.0


@pytest.fixture
def fs(freeswitch: FreeSwitchSimulator) -> FreeSwitchSimulator:
    freeswitch.endpoint("user/2002", answer_after=0.05)
    freeswitch.endpoint("user/2005", answer_after=0.05)
    return freeswitch


async def _answered(client: Inbound, balancer: InMemoryLoadBalancer, target: str) -> Channel:
    leg = await asyncio.wait_for(
        RingGroup.ring(client, [target], RingMode.BALANCING, 5.0, balancer=balancer), WAIT
    )
    assert leg is not None and leg.answered
    assert await balancer.get_count(target) == 1
    return leg


def _drop_connections(fs: FreeSwitchSimulator) -> None:
    for listener in list(fs.listeners):
        listener.abort()


async def _until_counted(balancer: InMemoryLoadBalancer, target: str, count: int) -> None:
    async def counted() -> bool:
        return await balancer.get_count(target) == count

    await until(counted, WAIT)


async def test_leg_hung_up_in_a_gap_ends_after_the_reconnect(fs: FreeSwitchSimulator) -> None:
    gaps: list[Gap] = []
    balancer = InMemoryLoadBalancer()
    # The reconnect waits 0.5-1 s: the hangup below is over long before it.
    async with Inbound(fs.host, fs.port, "ClueCon", reconnect=True, reconnect_delay=1.0,
                       on_gap=gaps.append) as client:
        gone = await _answered(client, balancer, "user/2002")
        kept = await _answered(client, balancer, "user/2005")
        ended: list[Channel] = []
        gone.add_end_callback(ended.append)
        kept.add_end_callback(ended.append)

        _drop_connections(fs)
        fs.channels[gone.uuid].hangup()
        await until(lambda: gone.uuid not in fs.channels, WAIT)
        assert not gaps and not gone.is_gone  # torn down while nobody was listening

        await _until_counted(balancer, "user/2002", 0)
        assert len(gaps) == 1
        assert gone.is_gone and gone.hangup_cause is None and ended == [gone]
        assert await gone.wait(ChannelState.EXECUTE, timeout=WAIT) is None  # at once
        # The leg still up is still followed: its hangup arrives and ends its count.
        assert not kept.is_gone and await balancer.get_count("user/2005") == 1
        await kept.hangup()
        await kept.wait(ChannelState.HANGUP, timeout=WAIT)
        await _until_counted(balancer, "user/2005", 0)
        assert kept.hangup_cause == "NORMAL_CLEARING" and ended == [gone, kept]


async def test_legs_of_a_connection_ended_for_good_are_no_longer_counted(
    fs: FreeSwitchSimulator,
) -> None:
    balancer = InMemoryLoadBalancer()
    client = Inbound(fs.host, fs.port, "ClueCon", reconnect=False)
    await client.start()
    leg = await _answered(client, balancer, "user/2002")
    waiting = asyncio.ensure_future(leg.wait("CHANNEL_BRIDGE", timeout=WAIT))
    await asyncio.sleep(0)
    _drop_connections(fs)
    await _until_counted(balancer, "user/2002", 0)
    assert await asyncio.wait_for(waiting, WAIT) is None  # the wait ended with it
    # Nobody saw it hang up (the call is still up in FreeSWITCH): it is only unfollowed.
    assert not leg.is_gone and leg.uuid in fs.channels
    assert await leg.wait(ChannelState.HANGUP, timeout=WAIT) is None  # at once
    await client.stop()


async def test_stop_unfollows_the_legs_of_the_connection(fs: FreeSwitchSimulator) -> None:
    balancer = InMemoryLoadBalancer()
    async with Inbound(fs.host, fs.port, "ClueCon") as client:
        leg = await _answered(client, balancer, "user/2002")
        ended: list[Channel] = []
        leg.add_end_callback(ended.append)
    assert ended == [leg]
    await _until_counted(balancer, "user/2002", 0)


async def test_legs_rung_from_an_outbound_session_outlive_its_connection_uncounted(
    fs: FreeSwitchSimulator,
) -> None:
    balancer = InMemoryLoadBalancer()
    legs: list[Channel] = []
    release = asyncio.Event()

    async def handler(session: Session) -> None:
        leg = await RingGroup.ring(session, ["user/2002"], RingMode.BALANCING, 5.0,
                                   balancer=balancer)
        assert leg is not None
        legs.append(leg)
        await release.wait()

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    try:
        fs.route("5000", socket=f"127.0.0.1:{server.addresses[0][1]} async full")
        await fs.place_call("5000", caller="1000")

        await until(lambda: bool(legs), WAIT)
        await _until_counted(balancer, "user/2002", 1)
        for listener in list(fs.listeners):
            if listener.outbound:
                listener.abort()
        await _until_counted(balancer, "user/2002", 0)
        assert legs[0].uuid in fs.channels and not legs[0].is_gone
    finally:
        release.set()
        await server.stop(timeout=2.0)
