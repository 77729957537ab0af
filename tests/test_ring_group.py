"""RingGroup against the simulator: inbound and from an outbound session."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator

import pytest

from genesis.channel import Channel
from genesis.exceptions import UnconnectedError
from genesis.group import InMemoryLoadBalancer, RingGroup, RingMode
from genesis.inbound import Inbound
from genesis.outbound import Outbound, Session
from genesis.testing import FreeSwitchSimulator
from genesis.testing.channels import Channel as SimChannel
from genesis.types import ChannelState
from tests.polling import until, zero

WAIT = 10.0


@pytest.fixture
async def fs() -> AsyncIterator[FreeSwitchSimulator]:
    async with FreeSwitchSimulator(host="127.0.0.1", port=0, password="ClueCon") as sim:
        sim.endpoint("user/2001", answer_after=0.6)
        sim.endpoint("user/2002", answer_after=0.2)
        sim.endpoint("user/2003", ring_forever=True)
        sim.endpoint("user/2004", busy=True)
        yield sim


@pytest.fixture
async def client(fs: FreeSwitchSimulator) -> AsyncIterator[Inbound]:
    async with Inbound(fs.host, fs.port, "ClueCon") as inbound:
        yield inbound


def _legs(fs: FreeSwitchSimulator, target: str) -> list[SimChannel]:
    number = target.rsplit("/", 1)[-1]
    return [c for c in fs.calls if c.direction == "outbound" and number in c.name]


async def _all_ended(fs: FreeSwitchSimulator, keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    await until(lambda: not set(fs.channels) - keep, WAIT)


async def test_parallel_returns_first_answer_and_hangs_up_the_rest(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    started = time.monotonic()
    winner = await asyncio.wait_for(
        RingGroup.ring(client, ["user/2001", "user/2002", "user/2003"], timeout=5.0), WAIT
    )
    elapsed = time.monotonic() - started
    assert winner is not None and winner.dial_path == "user/2002"
    assert elapsed < 0.6  # rung at once: the 0.2 s leg wins before the 0.6 s one answers
    assert winner.answered and winner.state == ChannelState.EXECUTE
    await _all_ended(fs, keep={winner.uuid})
    for loser in _legs(fs, "user/2001") + _legs(fs, "user/2003"):
        assert loser.hangup_cause == "ORIGINATOR_CANCEL"
    await winner.hangup()


async def test_parallel_timeout_from_start_leaves_no_leg(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    started = time.monotonic()
    winner = await asyncio.wait_for(
        RingGroup.ring(client, ["user/2003", "user/2003", "user/2004"], timeout=0.5), WAIT
    )
    assert winner is None
    assert time.monotonic() - started < 0.5 + 0.5
    await _all_ended(fs)
    assert len(_legs(fs, "user/2003")) == 2


async def test_sequential_rings_one_after_another(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    started = time.monotonic()
    winner = await asyncio.wait_for(
        RingGroup.ring(
            client, ["user/2004", "user/2003", "user/2002"], RingMode.SEQUENTIAL, timeout=0.4
        ),
        WAIT,
    )
    assert winner is not None and winner.dial_path == "user/2002"
    # busy at once, 0.4 s of ringing for 2003, then 0.2 s until 2002 answers
    assert 0.55 < time.monotonic() - started < 1.5
    order = [c.name for c in fs.calls if c.direction == "outbound"]
    assert [n.split("/")[-1].split("@")[0] for n in order] == ["2004", "2003", "2002"]
    await _all_ended(fs, keep={winner.uuid})
    await winner.hangup()


async def test_balancing_picks_least_loaded_and_counts_until_the_leg_ends(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    with pytest.raises(ValueError):
        await RingGroup.ring(client, ["user/2001"], RingMode.BALANCING)
    balancer = InMemoryLoadBalancer()
    await balancer.increment("user/2001")
    winner = await asyncio.wait_for(
        RingGroup.ring(
            client, ["user/2001", "user/2002"], RingMode.BALANCING, 5.0, balancer=balancer
        ),
        WAIT,
    )
    assert winner is not None and winner.dial_path == "user/2002"
    assert await balancer.get_count("user/2002") == 1
    await winner.hangup()
    await winner.wait(ChannelState.HANGUP, timeout=WAIT)
    await until(lambda: zero(balancer.get_count("user/2002")), WAIT)
    assert await balancer.get_count("user/2001") == 1  # the pre-existing call is untouched


async def test_balancing_moves_on_when_a_destination_fails(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    balancer = InMemoryLoadBalancer()
    winner = await asyncio.wait_for(
        RingGroup.ring(
            client, ["user/2004", "user/2002"], RingMode.BALANCING, 2.0, balancer=balancer
        ),
        WAIT,
    )
    assert winner is not None and winner.dial_path == "user/2002"
    # The busy leg's count ended with it.
    await until(lambda: zero(balancer.get_count("user/2004")), WAIT)
    await winner.hangup()


async def test_cancelled_ring_hangs_up_every_leg(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    ringing = asyncio.create_task(
        RingGroup.ring(client, ["user/2003", "user/2003", "user/2001"], timeout=30.0)
    )
    await asyncio.sleep(0.3)
    ringing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ringing
    await _all_ended(fs)
    assert all(c.hangup_cause == "ORIGINATOR_CANCEL" for c in _legs(fs, "user/2003"))


async def test_ring_group_from_outbound_session_bridges_the_caller(
    fs: FreeSwitchSimulator,
) -> None:
    results: dict[str, object] = {}
    release = asyncio.Event()

    async def handler(session: Session) -> None:
        winner = await RingGroup.ring(
            session, ["user/2001", "user/2002", "user/2003"], timeout=5.0
        )
        results["winner"] = winner
        assert winner is not None
        await session.channel.answer()
        await winner.bridge(session)
        results["bridged"] = True
        await release.wait()
        await winner.hangup()

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    try:
        port = server.addresses[0][1]
        fs.route("5000", socket=f"127.0.0.1:{port} async full")
        caller = await fs.place_call("5000", caller="1000")
        await until(lambda: "bridged" in results, WAIT)
        winner = results["winner"]
        assert isinstance(winner, Channel) and winner.dial_path == "user/2002"
        assert not caller.hungup  # the caller's channel was never touched by the cleanup
        assert caller.bridged_to == winner.uuid
        await until(lambda: not set(fs.channels) - {caller.uuid, winner.uuid}, WAIT)
        for loser in _legs(fs, "user/2001") + _legs(fs, "user/2003"):
            assert loser.hangup_cause == "ORIGINATOR_CANCEL"
        release.set()
        await asyncio.wait_for(caller.done, WAIT)
    finally:
        release.set()
        await server.stop(timeout=2.0)


async def test_legs_answering_together_leave_one_winner(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    fs.endpoint("user/2005", answer_after=0.2)
    group = ["user/2002", "user/2005", "user/2002", "user/2005"]
    winner = await asyncio.wait_for(RingGroup.ring(client, group, timeout=5.0), WAIT)
    assert winner is not None
    await _all_ended(fs, keep={winner.uuid})
    assert len([c for c in fs.calls if c.direction == "outbound"]) == 4
    await winner.hangup()


@pytest.mark.parametrize("mode", [RingMode.SEQUENTIAL, RingMode.BALANCING])
async def test_one_by_one_hangs_up_each_leg_when_its_turn_ends(
    fs: FreeSwitchSimulator, client: Inbound, mode: RingMode
) -> None:
    balancer = InMemoryLoadBalancer()
    winner = await asyncio.wait_for(
        RingGroup.ring(client, ["user/2003", "user/2002"], mode, 0.3, balancer=balancer), WAIT
    )
    assert winner is not None and winner.dial_path == "user/2002"
    [first] = _legs(fs, "user/2003")
    [second] = _legs(fs, "user/2002")
    # Gone before the next leg was even created, not left ringing beside it.
    assert first.hangup_cause == "ORIGINATOR_CANCEL"
    assert (
        first.profile.times["Channel-Hangup-Time"] <= second.profile.times["Channel-Created-Time"]
    )
    await winner.hangup()


@pytest.mark.parametrize("mode", [RingMode.PARALLEL, RingMode.SEQUENTIAL, RingMode.BALANCING])
@pytest.mark.parametrize(
    ("group", "variables"),
    [(["user/2002", "user/20 03"], None), (["user/2002", "user/2003"], {"bad name": 1})],
)
async def test_invalid_input_rings_and_counts_nothing(
    fs: FreeSwitchSimulator,
    client: Inbound,
    mode: RingMode,
    group: list[str],
    variables: dict[str, object] | None,
) -> None:
    balancer = InMemoryLoadBalancer()
    with pytest.raises(ValueError):
        await RingGroup.ring(client, group, mode, 2.0, variables, balancer)
    await asyncio.sleep(0.1)  # what a leg started would have reached the simulator by now
    assert fs.calls == []
    assert [await balancer.get_count(d) for d in ["user/2002", "user/2003"]] == [0, 0]


async def test_ring_on_a_connection_that_is_down_counts_nothing(
    fs: FreeSwitchSimulator,
) -> None:
    balancer = InMemoryLoadBalancer()
    client = Inbound(fs.host, fs.port, "ClueCon")  # never started
    for mode in RingMode:
        with pytest.raises(UnconnectedError):
            await RingGroup.ring(client, ["user/2002", "user/2001"], mode, 2.0,
                                 balancer=balancer)
        assert await balancer.get_count("user/2002") == 0
        assert await balancer.get_count("user/2001") == 0


class _BrokenBalancer(InMemoryLoadBalancer):
    """A balancer whose store is unreachable: every count fails."""

    async def increment(self, destination: str) -> None:
        raise OSError(f"cannot count {destination}")


async def test_parallel_legs_failing_together_raise_and_leave_nothing_unretrieved(
    fs: FreeSwitchSimulator, client: Inbound, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(OSError, match="cannot count"):
        await RingGroup.ring(client, ["user/2002", "user/2003"], balancer=_BrokenBalancer())
    gc.collect()  # a task whose exception nobody read reports it when collected
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
    assert fs.calls == []


class _UnreachableOnDecrement(InMemoryLoadBalancer):
    """A balancer whose store went away after the call was counted."""

    async def decrement(self, destination: str) -> None:
        raise ConnectionError(f"store unreachable while decrementing {destination}")


async def test_failed_decrement_is_logged_naming_the_leg_and_destination(
    fs: FreeSwitchSimulator, client: Inbound, caplog: pytest.LogCaptureFixture
) -> None:
    balancer = _UnreachableOnDecrement()
    winner = await asyncio.wait_for(
        RingGroup.ring(client, ["user/2002"], RingMode.BALANCING, 5.0, balancer=balancer), WAIT
    )
    assert winner is not None
    await winner.hangup()
    await winner.wait(ChannelState.HANGUP, timeout=WAIT)

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "genesis.group" and r.exc_info]

    await until(logged, WAIT)  # the decrement runs in the background
    [record] = logged()
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert winner.uuid in message and "user/2002" in message and "load balancer" in message
    assert record.exc_info is not None and isinstance(record.exc_info[1], ConnectionError)
    gc.collect()  # a task whose exception nobody read reports it when collected
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text


async def test_ring_cancelled_while_hanging_up_the_losers_hangs_up_the_winner(
    fs: FreeSwitchSimulator, client: Inbound
) -> None:
    fs.endpoint("user/2005", answer_after=0.5)
    ringing = asyncio.create_task(RingGroup.ring(client, ["user/2005", "user/2003"], timeout=5.0))
    await until(lambda: len(fs.calls) >= 2, WAIT)
    await asyncio.sleep(0.2)  # both legs created: the replies still to come are the hangups'
    fs.faults.delay_replies(2.0)
    [loser] = _legs(fs, "user/2003")
    await until(lambda: loser.hungup, WAIT)  # 2005 answered, and the ring is hanging 2003 up
    ringing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ringing
    fs.faults.clear()
    await _all_ended(fs)
    [winner] = _legs(fs, "user/2005")
    assert winner.answered and winner.hangup_cause == "ORIGINATOR_CANCEL"
