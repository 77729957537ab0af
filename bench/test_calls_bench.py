"""Calls per second set up and torn down through Channel, against the simulator.

The simulator runs in its own process (``python -m genesis.testing``) so it does not
share the client's event loop; both still share the machine's CPUs, so the figures are a
floor for a real FreeSWITCH, which does its work in C threads. One call is: ``bgapi
originate`` with a client-chosen uuid (the far end answers at once), wait for the leg to
reach EXECUTE, a blocking ``answer`` (sendmsg round trip to CHANNEL_EXECUTE_COMPLETE),
``hangup`` and wait for its CHANNEL_HANGUP. ``concurrency`` calls are in flight at once on
one Inbound connection; each round completes ``calls`` of them.

Figures (calls/s) land in each bench's ``extra_info``.
Run: ``.venv/bin/python -m pytest bench/test_calls_bench.py --benchmark-only -s``.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from genesis.channel import Channel
from genesis.inbound import Inbound
from genesis.types import ChannelState

REPO = Path(__file__).resolve().parent.parent
WAIT = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def simulator() -> Iterator[int]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "genesis.testing", "--port", str(port),
         "--endpoint", "user/1001=0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once listening
        assert "listening" in line, line
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = uvloop.new_event_loop()
    yield event_loop
    event_loop.close()


async def _call(client: Inbound) -> None:
    leg = await Channel.create(client, "user/1001")
    await leg.wait(ChannelState.EXECUTE, timeout=WAIT)
    await leg.answer()
    await leg.hangup()
    await leg.wait(ChannelState.HANGUP, timeout=WAIT)


async def _round(client: Inbound, calls: int, concurrency: int) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            await _call(client)

    share, extra = divmod(calls, concurrency)
    await asyncio.wait_for(
        asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency))), 120
    )


@pytest.mark.parametrize(("concurrency", "calls"), [(1, 50), (10, 200), (100, 400)])
def test_calls_per_second(
    benchmark: pytest.FixtureRequest,
    simulator: int,
    loop: asyncio.AbstractEventLoop,
    concurrency: int,
    calls: int,
) -> None:
    client = Inbound("127.0.0.1", simulator, "ClueCon")
    loop.run_until_complete(client.start())
    try:
        loop.run_until_complete(_round(client, 10, min(concurrency, 10)))  # warm-up
        timings: list[float] = []

        def one_round() -> None:
            started = time.perf_counter()
            loop.run_until_complete(_round(client, calls, concurrency))
            timings.append(time.perf_counter() - started)

        benchmark.pedantic(one_round, rounds=3, iterations=1)  # type: ignore[attr-defined]
        best = min(timings)
        benchmark.extra_info["calls_per_round"] = calls  # type: ignore[attr-defined]
        benchmark.extra_info["concurrency"] = concurrency  # type: ignore[attr-defined]
        benchmark.extra_info["calls_per_s"] = round(calls / best, 1)  # type: ignore[attr-defined]
        print(f"\n{concurrency:>3} concurrent: {calls / best:8.1f} calls/s (best of 3)")

        async def released() -> None:  # routing is freed at CHANNEL_DESTROY, just after
            while client._dispatcher.channels:
                await asyncio.sleep(0.01)

        loop.run_until_complete(asyncio.wait_for(released(), WAIT))
    finally:
        loop.run_until_complete(client.stop())
