"""Channel against the FreeSWITCH simulator over real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

import pytest

from genesis.channel import Channel
from genesis.exceptions import ChannelError, TimeoutError, UnconnectedError
from genesis.inbound import Inbound
from genesis.testing import FreeSwitchSimulator
from genesis.types import ChannelState
from tests.polling import until

WAIT = 10.0


@pytest.fixture
async def fs() -> AsyncIterator[FreeSwitchSimulator]:
    async with FreeSwitchSimulator(host="127.0.0.1", port=0, password="ClueCon") as sim:
        yield sim


@pytest.fixture
async def client(fs: FreeSwitchSimulator) -> AsyncIterator[Inbound]:
    async with Inbound(fs.host, fs.port, "ClueCon") as inbound:
        yield inbound


async def _gone(fs: FreeSwitchSimulator, uuid: str) -> None:
    await until(lambda: uuid not in fs.channels, WAIT)


def _routes(client: Inbound) -> Mapping[str, object]:
    return client._dispatcher.channels  # the engine's per-uuid routing table


async def test_hundred_legs_at_once_on_one_connection(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    fs.endpoint("user/1001", answer_after=0.3)
    started = time.monotonic()
    legs = await asyncio.wait_for(
        asyncio.gather(*(Channel.create(client, "user/1001") for _ in range(100))), WAIT
    )
    # Serialized originates would take 100 x 0.3 s; concurrent ones about 0.3 s.
    assert time.monotonic() - started < 3.0
    assert len({leg.uuid for leg in legs}) == 100
    await asyncio.wait_for(
        asyncio.gather(*(leg.wait(ChannelState.EXECUTE, timeout=WAIT) for leg in legs)), WAIT
    )
    for leg in legs:
        assert leg.state == ChannelState.EXECUTE
        assert leg.answered
        assert fs.channels[leg.uuid].applications[-1:] == ["park"]
    await asyncio.wait_for(asyncio.gather(*(leg.hangup() for leg in legs)), WAIT)
    for leg in legs:
        await _gone(fs, leg.uuid)
    await until(lambda: not _routes(client), WAIT)
    assert not client.has_filters


@pytest.mark.parametrize(
    ("dial", "variables", "cause"),
    [
        ("user/1002", None, "USER_BUSY"),
        ("user/1003", {"originate_timeout": 1}, "NO_ANSWER"),
        ("user/1004", None, "CALL_REJECTED"),
        ("error/no_route_destination", None, "NO_ROUTE_DESTINATION"),
        ("user/9999", None, "USER_NOT_REGISTERED"),
    ],
)
async def test_failed_originate_raises_the_cause_at_once(
    fs: FreeSwitchSimulator,
    client: Inbound,
    dial: str,
    variables: dict[str, object] | None,
    cause: str,
) -> None:
    fs.endpoint("user/1002", busy=True)
    # A leg that never signals ringing: with return_ring_ready the originate only fails with
    # NO_ANSWER when nothing rang before originate_timeout.
    fs.endpoint("user/1003", ring_forever=True, ringing=False)
    fs.endpoint("user/1004", fail="CALL_REJECTED")
    ring_time = 1.0 if cause == "NO_ANSWER" else 0.0
    started = time.monotonic()
    with pytest.raises(ChannelError) as info:
        await asyncio.wait_for(Channel.create(client, dial, variables), WAIT)
    assert info.value.cause == cause
    assert time.monotonic() - started < ring_time + 0.5
    await until(lambda: not _routes(client), WAIT)


async def test_variables_reach_the_leg(fs: FreeSwitchSimulator, client: Inbound) -> None:
    fs.endpoint("user/1001")
    leg = await asyncio.wait_for(
        Channel.create(
            client,
            "user/1001",
            {
                "origination_caller_id_name": "Ann Lee",
                "campaign": "spring",
                "origination_uuid": "x",
            },
        ),
        WAIT,
    )
    sim_leg = fs.channels[leg.uuid]
    assert sim_leg.variables["campaign"] == "spring"
    assert sim_leg.variables["origination_caller_id_name"] == "Ann Lee"
    assert sim_leg.variables["origination_uuid"] == leg.uuid  # ours, not the caller's
    await leg.hangup()


async def test_operations_target_their_own_leg(fs: FreeSwitchSimulator, client: Inbound) -> None:
    fs.endpoint("user/1001")
    a, b = await asyncio.wait_for(
        asyncio.gather(Channel.create(client, "user/1001"), Channel.create(client, "user/1001")),
        WAIT,
    )
    await asyncio.wait_for(a.hangup("CALL_REJECTED"), WAIT)
    await asyncio.wait_for(a.wait(ChannelState.HANGUP, timeout=WAIT), WAIT)
    assert a.is_gone and a.hangup_cause == "CALL_REJECTED"
    assert not b.is_gone
    assert fs.channels[b.uuid].answer_state == "answered"
    assert await b.hangup() is not None
    assert await a.hangup() is None  # already gone: nothing sent, nothing raised


async def test_blocking_playback_lasts_the_file(fs: FreeSwitchSimulator, client: Inbound) -> None:
    fs.endpoint("user/1001")
    fs.file_durations["/tmp/prompt.wav"] = 0.6
    leg = await asyncio.wait_for(Channel.create(client, "user/1001"), WAIT)
    started = time.monotonic()
    done = await asyncio.wait_for(leg.playback("/tmp/prompt.wav"), WAIT)
    assert time.monotonic() - started >= 0.55
    assert done.name == "CHANNEL_EXECUTE_COMPLETE"
    assert done["Application"] == "playback"
    assert done["Unique-ID"] == leg.uuid
    started = time.monotonic()
    reply = await asyncio.wait_for(leg.playback("/tmp/prompt.wav", block=False), WAIT)
    assert time.monotonic() - started < 0.3
    assert str(reply["Reply-Text"]).startswith("+OK")
    await leg.hangup()


async def test_hangup_during_blocking_playback_raises(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    fs.endpoint("user/1001")
    fs.file_durations["/tmp/long.wav"] = 30.0
    leg = await asyncio.wait_for(Channel.create(client, "user/1001"), WAIT)
    playing = asyncio.create_task(leg.playback("/tmp/long.wav"))
    await asyncio.sleep(0.2)
    fs.channels[leg.uuid].hangup("NORMAL_CLEARING")
    started = time.monotonic()
    with pytest.raises(ChannelError):
        await asyncio.wait_for(playing, WAIT)
    assert time.monotonic() - started < 0.5


async def test_say_and_log(fs: FreeSwitchSimulator, client: Inbound) -> None:
    fs.endpoint("user/1001")
    leg = await asyncio.wait_for(Channel.create(client, "user/1001"), WAIT)
    done = await asyncio.wait_for(leg.say("42", lang="us"), WAIT)
    assert done["Application"] == "say"
    assert done["Application-Data"] == "en:us NUMBER pronounced FEMININE 42"
    await asyncio.wait_for(leg.log("INFO", "hello"), WAIT)
    await leg.hangup()


async def test_play_and_get_digits_exposes_the_digits(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    fs.endpoint("user/1005", answer_after=0.0, digits="42#", digit_interval=0.05)
    fs.playback_seconds = 0.01
    leg = await asyncio.wait_for(Channel.create(client, "user/1005"), WAIT)
    done = await asyncio.wait_for(
        leg.play_and_get_digits(1, 3000, "#", "/tmp/menu.wav", minimal=1, maximum=4), WAIT
    )
    assert done["Application"] == "play_and_get_digits"
    assert leg.digits == "42"
    await leg.hangup()


async def test_dtmf_is_scoped_to_its_leg(fs: FreeSwitchSimulator, client: Inbound) -> None:
    fs.endpoint("user/1001")
    a, b = await asyncio.wait_for(
        asyncio.gather(Channel.create(client, "user/1001"), Channel.create(client, "user/1001")),
        WAIT,
    )
    seen_a: list[str] = []
    seen_b: list[str] = []
    only_hash: list[str] = []
    a.on_dtmf()(seen_a.append)
    b.on_dtmf()(seen_b.append)

    @a.on_dtmf("#")
    async def on_hash(digit: str) -> None:
        only_hash.append(digit)

    b_waits = asyncio.create_task(b.wait("DTMF", timeout=0.5))
    a_waits = asyncio.create_task(a.wait("DTMF", timeout=WAIT))
    await asyncio.sleep(0.05)
    await client.api(f"uuid_send_dtmf {a.uuid} 12#")
    event = await asyncio.wait_for(a_waits, WAIT)
    assert event is not None and event["DTMF-Digit"] == "1"
    with pytest.raises(TimeoutError):
        await b_waits
    await until(lambda: len(seen_a) >= 3 and bool(only_hash), WAIT)
    assert seen_a == ["1", "2", "#"]
    assert only_hash == ["#"]
    assert seen_b == []
    await asyncio.gather(a.hangup(), b.hangup())


async def test_hangup_ends_a_wait_at_once(fs: FreeSwitchSimulator, client: Inbound) -> None:
    fs.endpoint("user/1001")
    leg = await asyncio.wait_for(Channel.create(client, "user/1001"), WAIT)
    waiting = asyncio.create_task(leg.wait("DTMF", timeout=30))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    fs.channels[leg.uuid].hangup("NORMAL_CLEARING")
    assert await asyncio.wait_for(waiting, WAIT) is None
    assert time.monotonic() - started < 0.5
    # Already hung up: returns at once.
    assert await leg.wait(ChannelState.EXECUTE, timeout=30) is None


async def test_wait_times_out(fs: FreeSwitchSimulator, client: Inbound) -> None:
    fs.endpoint("user/1001")
    leg = await asyncio.wait_for(Channel.create(client, "user/1001"), WAIT)
    with pytest.raises(TimeoutError):
        await leg.wait("CHANNEL_BRIDGE", timeout=0.2)
    assert await leg.wait(ChannelState.EXECUTE, timeout=WAIT) is None  # already there
    await leg.hangup()


async def test_bridge_two_legs(fs: FreeSwitchSimulator, client: Inbound) -> None:
    fs.endpoint("user/1001")
    a, b = await asyncio.wait_for(
        asyncio.gather(Channel.create(client, "user/1001"), Channel.create(client, "user/1001")),
        WAIT,
    )
    bridged = asyncio.create_task(a.wait("CHANNEL_BRIDGE", timeout=WAIT))
    await asyncio.wait_for(a.bridge(b), WAIT)
    await asyncio.wait_for(bridged, WAIT)
    assert fs.channels[a.uuid].bridged_to == b.uuid
    await a.hangup()
    await asyncio.wait_for(b.wait(ChannelState.HANGUP, timeout=WAIT), WAIT)
    with pytest.raises(ChannelError):
        await b.bridge(a)


async def test_filters_added_per_leg_and_removed(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    fs.endpoint("user/1001")
    await client.add_filter("Event-Name", "HEARTBEAT")  # a filtered connection
    leg = await asyncio.wait_for(Channel.create(client, "user/1001"), WAIT)
    assert ("Unique-ID", leg.uuid) in client._filters
    # Events still reach the leg through its filter.
    await asyncio.wait_for(leg.wait(ChannelState.EXECUTE, timeout=WAIT), WAIT)
    await leg.hangup()
    await until(lambda: ("Unique-ID", leg.uuid) not in client._filters, WAIT)
    assert list(client._filters) == [("Event-Name", "HEARTBEAT")]


async def test_unfiltered_connection_gets_no_filter(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    fs.endpoint("user/1001")
    leg = await asyncio.wait_for(Channel.create(client, "user/1001"), WAIT)
    assert not client.has_filters
    await leg.hangup()


async def test_create_returns_at_ring_ready_and_wait_sees_the_answer(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    fs.endpoint("user/1001", answer_after=0.8)
    started = time.monotonic()
    leg = await asyncio.wait_for(Channel.create(client, "user/1001"), WAIT)
    assert time.monotonic() - started < 0.6
    assert not leg.answered
    await leg.wait(ChannelState.EXECUTE, timeout=WAIT)
    assert leg.answered and time.monotonic() - started >= 0.8
    await leg.hangup()


async def test_cancelled_create_leaves_no_leg(fs: FreeSwitchSimulator, client: Inbound) -> None:
    fs.endpoint("user/1001", answer_after=5.0, ringing=False)
    creating = asyncio.create_task(Channel.create(client, "user/1001"))
    await asyncio.sleep(0.2)
    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating
    await until(lambda: not fs.channels, WAIT)
    assert fs.calls[-1].hangup_cause == "ORIGINATOR_CANCEL"


async def test_session_own_channel_uses_session_sendmsg_and_goes_away(
    fs: FreeSwitchSimulator,
) -> None:
    from genesis.exceptions import SessionGoneAway
    from genesis.outbound import Outbound, Session

    fs.file_durations["/tmp/long.wav"] = 30.0
    outcome: dict[str, object] = {}
    playing = asyncio.Event()

    async def handler(session: Session) -> None:
        channel = session.channel
        assert isinstance(channel, Channel) and channel.uuid == session.uuid
        await channel.answer()
        playing.set()
        try:
            await channel.playback("/tmp/long.wav")
        except BaseException as exc:
            outcome["error"] = exc

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    try:
        fs.route("5001", socket=f"127.0.0.1:{server.addresses[0][1]} async full")
        caller = await fs.place_call("5001", caller="1000")
        await asyncio.wait_for(playing.wait(), WAIT)
        await asyncio.sleep(0.1)
        assert caller.answer_state == "answered"
        caller.hangup("NORMAL_CLEARING")
        await until(lambda: "error" in outcome, WAIT)
        assert isinstance(outcome["error"], SessionGoneAway)
    finally:
        await server.stop(timeout=2.0)


@pytest.mark.parametrize("dial", ["user/10 01", "user/1001"])
async def test_create_that_cannot_start_still_ends(fs: FreeSwitchSimulator, dial: str) -> None:
    # A bad dial path, or a connection that is down when the leg's events are subscribed:
    # no leg will ever exist, and whatever counts it (on_end) must hear so.
    client = Inbound(fs.host, fs.port, "ClueCon")  # never started
    ended: list[Channel] = []
    with pytest.raises((ValueError, UnconnectedError)):
        await Channel.create(client, dial, on_end=ended.append)
    assert len(ended) == 1 and ended[0].dial_path == dial
    assert not _routes(client)


async def test_leg_of_a_session_whose_connection_closes_is_not_reported_hung_up(
    fs: FreeSwitchSimulator,
) -> None:
    from genesis.exceptions import ConnectionLost
    from genesis.outbound import Outbound, Session

    fs.endpoint("user/1001")
    fs.file_durations["/tmp/long.wav"] = 30.0
    outcome: dict[str, object] = {}

    async def handler(session: Session) -> None:
        leg = await Channel.create(session, "user/1001")
        await leg.wait(ChannelState.EXECUTE, timeout=WAIT)
        outcome["leg"] = leg
        try:
            await leg.playback("/tmp/long.wav")
        except BaseException as exc:
            outcome["error"] = exc

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    try:
        fs.route("5002", socket=f"127.0.0.1:{server.addresses[0][1]} async full")
        await fs.place_call("5002", caller="1000")
        await until(lambda: "leg" in outcome, WAIT)
        leg = outcome["leg"]
        assert isinstance(leg, Channel)
        # The blocking playback is under way.
        await until(lambda: "playback" in fs.channels[leg.uuid].applications, WAIT)
        for listener in list(fs.listeners):
            if listener.outbound:
                listener.abort()
        await until(lambda: "error" in outcome, WAIT)
        # The connection closed; the leg itself is still up in FreeSWITCH.
        assert isinstance(outcome["error"], ConnectionLost)
        assert leg.uuid in fs.channels and not fs.channels[leg.uuid].hungup
    finally:
        await server.stop(timeout=2.0)
