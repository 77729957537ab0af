"""The Redis queue across real processes: a shared limit holds, and a SIGKILLed holder's
slot (or place in line) is reclaimed once its lease expires."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest

from genesis.queue import Queue, RedisBackend
from tests.redis_server import kill, run_workers, spawn_python

WAIT = 10.0

# A worker process: takes `rounds` slots of a queue limited to `limit`, counting who is
# inside with an atomic INCR so any excess over the limit is recorded in Redis.
WORKER = """
import asyncio, sys
import redis.asyncio
from genesis.queue import Queue, RedisBackend

async def main(url, prefix, rounds, limit):
    backend = RedisBackend(url, key_prefix=prefix, lease_ttl=3.0, poll_interval=0.01)
    client = redis.asyncio.Redis.from_url(url)
    queue = Queue(backend)
    for _ in range(rounds):
        async with queue.slot("shared", max_concurrent=limit, timeout=30):
            inside = await client.incr(prefix + "inside")
            if inside > limit:
                await client.rpush(prefix + "violations", inside)
            await asyncio.sleep(0.003)
            await client.decr(prefix + "inside")
            await client.incr(prefix + "done")
    await client.aclose()
    await backend.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""

# Takes a slot (or a place in line behind a held slot), says so, then sleeps until killed.
HOLDER = """
import asyncio, sys
from genesis.queue import RedisBackend

async def main(url, prefix, item, mode):
    backend = RedisBackend(url, key_prefix=prefix, lease_ttl=1.0, poll_interval=0.05)
    if mode == "hold":
        await backend.wait_and_acquire("q", item, 1, 10)
        print("held", flush=True)
    else:
        await backend.enqueue("q", item)
        print("waiting", flush=True)
        await backend.wait_and_acquire("q", item, 1, None)
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:5]))
"""


@pytest.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_url, key_prefix=redis_prefix, lease_ttl=1.0, poll_interval=0.02)
    yield backend
    await backend.close()


async def test_processes_share_one_limit(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio

    await run_workers(WORKER, (redis_url, redis_prefix, "15", "2"), count=3)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.lrange(redis_prefix + "violations", 0, -1) == []
        assert int(await client.get(redis_prefix + "done") or 0) == 45
    finally:
        await client.aclose()
    check = RedisBackend(redis_url, key_prefix=redis_prefix)
    try:
        assert await check.active("shared") == 0
        assert await check.depth("shared") == 0
    finally:
        await check.close()


async def test_killed_holder_slot_is_reclaimed(
    backend: RedisBackend, redis_url: str, redis_prefix: str
) -> None:
    holder = await spawn_python(HOLDER, redis_url, redis_prefix, "victim", "hold")
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), WAIT)
        assert line == b"held\n"
        # Still alive: the holder renews its lease, so the slot stays taken past the TTL.
        waiter = asyncio.create_task(backend.wait_and_acquire("q", "survivor", 1, WAIT))
        await asyncio.sleep(1.5)
        assert not waiter.done()
        holder.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.wait_for(waiter, WAIT)
        assert time.monotonic() - killed_at < 1.0 + 0.5  # one lease_ttl plus polling
        assert await backend.active("q") == 1
        await backend.release("q", "survivor")
    finally:
        await kill(holder)


async def test_killed_waiter_does_not_block_the_line(
    backend: RedisBackend, redis_url: str, redis_prefix: str
) -> None:
    await backend.wait_and_acquire("q", "first", 1, WAIT)
    ghost = await spawn_python(HOLDER, redis_url, redis_prefix, "ghost", "wait")
    try:
        assert ghost.stdout is not None
        assert await asyncio.wait_for(ghost.stdout.readline(), WAIT) == b"waiting\n"
        await backend.enqueue("q", "next")  # behind the ghost
        assert await backend.depth("q") == 2
        ghost.send_signal(signal.SIGKILL)
        await asyncio.wait_for(ghost.wait(), WAIT)
        await backend.release("q", "first")
        # The ghost stops refreshing its heartbeat: it expires and "next" moves up.
        started = time.monotonic()
        await backend.wait_and_acquire("q", "next", 1, WAIT)
        assert time.monotonic() - started < 1.0 + 0.5
        assert await backend.depth("q") == 0
        await backend.release("q", "next")
    finally:
        await kill(ghost)


async def test_live_waiter_keeps_its_place_past_the_ttl(backend: RedisBackend) -> None:
    queue = Queue(backend)
    async with queue.slot("q"):
        early = asyncio.create_task(backend.wait_and_acquire("q", "early", 1, WAIT))
        await asyncio.sleep(1.5)  # longer than lease_ttl: heartbeats keep "early" in line
        await backend.enqueue("q", "late")
        assert await backend.depth("q") == 2
    await asyncio.wait_for(early, WAIT)
    await backend.release("q", "early")
    await backend.release("q", "late")
