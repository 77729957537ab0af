"""Channel.wait on FreeSWITCH's channel states, against the simulator over real TCP.

The states are not ordered like their numbers: real 1.10.12 legs moved by uuid_bridge go
EXECUTE, HIBERNATE, RESET, SOFT_EXECUTE, then EXCHANGE_MEDIA or CONSUME_MEDIA (see the
corpus's CHANNEL_STATE events). A wait on one of those states waits for the leg to have been
in it; NEW, INIT, ROUTING and the hangup states are reached or passed in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from genesis.channel import Channel
from genesis.inbound import Inbound
from genesis.protocol.parser import ESLEvent
from genesis.testing import FreeSwitchSimulator
from genesis.types import ChannelState

WAIT = 10.0


@pytest.fixture
async def client(freeswitch: FreeSwitchSimulator) -> AsyncIterator[Inbound]:
    freeswitch.endpoint("user/1001")  # answers at once
    async with Inbound(freeswitch.host, freeswitch.port, "ClueCon") as inbound:
        yield inbound


async def _answered(client: Inbound) -> Channel:
    leg = await asyncio.wait_for(Channel.create(client, "user/1001"), WAIT)
    await leg.wait(ChannelState.EXECUTE, timeout=WAIT)
    assert leg.answered and leg.state is ChannelState.EXECUTE
    return leg


def _state_of(event: ESLEvent | None) -> object:
    assert event is not None
    return event.get("Channel-State")


async def test_uuid_bridge_states_are_waited_for_not_passed(
    freeswitch: FreeSwitchSimulator, client: Inbound
) -> None:
    a, b = await asyncio.gather(_answered(client), _answered(client))
    # Neither leg has been through the bridge's states yet, whatever their numbers say
    # (SOFT_EXECUTE is 3, EXECUTE 4; PARK is 6, HIBERNATE 8).
    soft = asyncio.create_task(a.wait(ChannelState.SOFT_EXECUTE, timeout=WAIT))
    reset = asyncio.create_task(a.wait(ChannelState.RESET, timeout=WAIT))
    parked = asyncio.create_task(a.wait(ChannelState.PARK, timeout=WAIT))
    exchanging = asyncio.create_task(b.wait(ChannelState.EXCHANGE_MEDIA, timeout=WAIT))
    bridged = asyncio.create_task(a.wait("CHANNEL_BRIDGE", timeout=WAIT))
    await asyncio.sleep(0)  # the waits are registered before anything moves

    await asyncio.wait_for(a.bridge(b), WAIT)
    assert _state_of(await asyncio.wait_for(reset, WAIT)) == "CS_RESET"
    assert _state_of(await asyncio.wait_for(soft, WAIT)) == "CS_SOFT_EXECUTE"
    assert _state_of(await asyncio.wait_for(exchanging, WAIT)) == "CS_EXCHANGE_MEDIA"
    await asyncio.wait_for(bridged, WAIT)
    assert a.state is ChannelState.SOFT_EXECUTE and b.state is ChannelState.EXCHANGE_MEDIA

    # HIBERNATE came and went on the way: a bridged leg is not parked.
    assert not parked.done()
    # Out of CS_EXECUTE while bridged, but answered there before: EXECUTE was reached.
    assert await b.wait(ChannelState.EXECUTE, timeout=WAIT) is None
    never_parked = asyncio.create_task(b.wait(ChannelState.PARK, timeout=WAIT))
    # Passed along the forward progression: at once.
    assert await a.wait(ChannelState.ROUTING, timeout=WAIT) is None
    assert await b.wait(ChannelState.INIT, timeout=WAIT) is None

    # uuid_park puts a leg in CS_PARK (switch_ivr_park_session).
    assert (await client.api(f"uuid_park {a.uuid}")).startswith("+OK")
    assert _state_of(await asyncio.wait_for(parked, WAIT)) == "CS_PARK"
    assert await a.wait(ChannelState.PARK, timeout=WAIT) is None  # there now

    # Hangup is terminal: it ends the waits still pending, and no later state is waited for.
    assert not never_parked.done()
    await a.hangup()
    assert await asyncio.wait_for(never_parked, WAIT) is None
    assert await b.wait(ChannelState.DESTROY, timeout=WAIT) is None
    assert b.is_gone


async def test_none_is_not_a_state_to_wait_for(client: Inbound) -> None:
    leg = await _answered(client)
    with pytest.raises(ValueError, match="NONE"):
        await leg.wait(ChannelState.NONE, timeout=WAIT)
    with pytest.raises(ValueError, match="NONE"):
        await leg.wait("CS_NONE", timeout=WAIT)
    await leg.hangup()


async def test_an_unknown_state_name_keeps_the_last_known_state(
    freeswitch: FreeSwitchSimulator, client: Inbound
) -> None:
    leg = await _answered(client)
    seen = asyncio.create_task(leg.wait("CHANNEL_STATE", timeout=WAIT))
    await asyncio.sleep(0)
    # A state this release has no name for, as a later FreeSWITCH might send.
    freeswitch.channels[leg.uuid].fire("CHANNEL_STATE", post={"Channel-State": "CS_LATER"})
    assert _state_of(await asyncio.wait_for(seen, WAIT)) == "CS_LATER"
    assert leg.state is ChannelState.EXECUTE
    # Waits on states already passed still return at once.
    await leg.wait(ChannelState.ROUTING, timeout=0.5)
    await leg.hangup()
