"""Outbound over real TCP: a dialplan socket without ``full``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from genesis.outbound import Outbound, Session
from genesis.testing import FreeSwitchSimulator


@pytest.mark.parametrize("mode", ["async", "static"])
async def test_socket_without_full_gets_its_events_through_myevents(
    freeswitch: FreeSwitchSimulator, mode: str
) -> None:
    # Without "full" FreeSWITCH refuses "event"; the handler must still run, and a blocking
    # execute still needs the call's CHANNEL_EXECUTE_COMPLETE.
    seen: dict[str, Any] = {}

    async def handler(session: Session) -> None:
        seen["control"] = session.context.get("Control")
        done = await session.sendmsg("execute", "answer", block=True, timeout=5)
        seen["complete"] = (done.name, done.get("Application"))
        await session.sendmsg("hangup", data="NORMAL_CLEARING")

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    try:
        socket = f"127.0.0.1:{server.addresses[0][1]}" + (" async" if mode == "async" else "")
        freeswitch.route("5000", socket=socket)
        channel = await freeswitch.place_call(destination="5000")
        await asyncio.wait_for(channel.done, 10)
    finally:
        await server.stop(timeout=2)
    assert seen == {
        "control": "single-channel",
        "complete": ("CHANNEL_EXECUTE_COMPLETE", "answer"),
    }
    assert channel.applications == ["socket", "answer"]
    assert channel.hangup_cause == "NORMAL_CLEARING"
