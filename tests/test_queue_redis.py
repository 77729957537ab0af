"""The Redis queue across real processes: a shared limit holds, and a SIGKILLed holder's
slot (or place in line) is reclaimed once its lease expires."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

from genesis.exceptions import GenesisError
from genesis.queue import QueueReleasedError, RedisBackend
from tests.polling import until
from tests.redis_server import kill, run_workers, spawn_python

WAIT = 10.0

# A worker process: takes `rounds` slots of a queue limited to `limit`, counting who is
# inside with an atomic INCR so any excess over the limit is recorded in Redis.
WORKER = """
import asyncio, sys
import redis.asyncio
import redis.exceptions
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


async def _has_waiter(backend: RedisBackend) -> bool:
    """Someone waits in line "q" (in any process)."""
    return await backend.depth("q") >= 1


def _waits_here(backend: RedisBackend) -> bool:
    """A wait in line "q" runs in this process, ``backend``'s."""
    return "q" in backend._lines and bool(backend._lines["q"].waiters)


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


async def test_release_from_another_process_ends_the_wait(backend: RedisBackend) -> None:
    """A dialer's hang-up handler in another process releases a waiting call: the wait
    raises QueueReleasedError within a poll instead of taking a place at the back again
    and, later, a slot nobody wanted."""
    other = RedisBackend(backend.url, key_prefix=backend.key_prefix, lease_ttl=1.0,
                         poll_interval=0.02)
    try:
        await backend.wait_and_acquire("q", "holder", 1, WAIT)
        gone = asyncio.create_task(backend.wait_and_acquire("q", "gone", 1, None))
        await until(lambda: _has_waiter(backend), WAIT)
        await other.release("q", "gone")
        with pytest.raises(QueueReleasedError):
            await asyncio.wait_for(gone, WAIT)
        await backend.release("q", "holder")
        assert (await backend.active("q"), await backend.depth("q")) == (0, 0)
    finally:
        await other.close()


@pytest.mark.parametrize("again_by", ["wait", "enqueue"])
async def test_a_place_its_item_takes_again_does_not_revive_a_released_wait(
    backend: RedisBackend, again_by: str,
) -> None:
    """A wait is known by its place, not by its item id alone: the same id taking a place
    again (a new wait, or enqueue()) in another process before the released wait's process
    polled leaves the released wait released. (It took the new place for its own and went
    on waiting: two callers in one place, or a slot for a caller that was released.)"""
    other = RedisBackend(backend.url, key_prefix=backend.key_prefix, lease_ttl=1.0,
                         poll_interval=0.02)
    try:
        await backend.wait_and_acquire("q", "holder", 1, WAIT)
        gone = asyncio.create_task(backend.wait_and_acquire("q", "x", 1, None))
        await until(lambda: _waits_here(backend), WAIT)
        polls = backend._acquire_many
        held_back = asyncio.Event()

        async def late_poll(**kwargs: Any) -> Any:
            await held_back.wait()  # this process polls only once the new place is taken
            return await polls(**kwargs)

        backend._acquire_many = late_poll
        await other.release("q", "x")
        again = None
        if again_by == "wait":
            again = asyncio.create_task(other.wait_and_acquire("q", "x", 1, WAIT))
            await until(lambda: _has_waiter(backend), WAIT)
        else:
            await other.enqueue("q", "x")
        held_back.set()
        with pytest.raises(QueueReleasedError):
            await asyncio.wait_for(gone, WAIT)
        assert (await backend.active("q"), await backend.depth("q")) == (1, 1)
        await backend.release("q", "holder")
        if again is not None:
            await asyncio.wait_for(again, WAIT)
            assert (await backend.active("q"), await backend.depth("q")) == (1, 0)
        await other.release("q", "x")
        assert (await backend.active("q"), await backend.depth("q")) == (0, 0)
    finally:
        await other.close()


async def test_a_waiter_purged_as_dead_takes_a_place_again(
    backend: RedisBackend, redis_url: str,
) -> None:
    """A waiter dropped from line as dead (its process stalled past lease_ttl, done here
    by hand) was not released: it takes a new place and goes on waiting."""
    waiting_key, beats_key = backend._keys("q")[:2]
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await backend.wait_and_acquire("q", "holder", 1, WAIT)
        stalled = asyncio.create_task(backend.wait_and_acquire("q", "stalled", 1, WAIT))
        await until(lambda: _waits_here(backend), WAIT)
        await client.zrem(waiting_key, "stalled")
        await client.zrem(beats_key, "stalled")
        await until(lambda: _has_waiter(backend), WAIT)
        assert not stalled.done()
        await backend.release("q", "holder")
        await asyncio.wait_for(stalled, WAIT)
        await backend.release("q", "stalled")
    finally:
        await client.aclose()


async def _script_calls(client: redis.asyncio.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{cmd}", {}).get("calls", 0)) for cmd in ("evalsha", "eval"))


async def test_waiters_of_one_process_share_one_poll(redis_url: str, redis_prefix: str) -> None:
    """Forty waiters cost Redis one script run per poll, not forty."""
    backend = RedisBackend(redis_url, key_prefix=redis_prefix, lease_ttl=3.0, poll_interval=0.05)
    client = redis.asyncio.Redis.from_url(redis_url)
    order: list[int] = []

    async def waiter(n: int) -> None:
        await backend.wait_and_acquire("q", f"w{n}", 1, WAIT)
        order.append(n)
        await backend.release("q", f"w{n}")

    try:
        await backend.wait_and_acquire("q", "holder", 1, WAIT)
        for n in range(40):
            await backend.enqueue("q", f"w{n}")  # places are taken in this order
        waiters = [asyncio.create_task(waiter(n)) for n in range(40)]
        await asyncio.sleep(0.3)  # each has asked once on its own by now, and waits
        before = await _script_calls(client)
        await asyncio.sleep(1.0)  # about 20 polls
        calls = await _script_calls(client) - before
        assert calls <= 30, calls  # one caller polling alone would make 20 of them
        await backend.release("q", "holder")
        await asyncio.wait_for(asyncio.gather(*waiters), WAIT)
        assert order == list(range(40))
    finally:
        await client.aclose()
        await backend.close()


async def test_slot_freed_here_wakes_the_next_waiter_at_once(backend: RedisBackend) -> None:
    slow = RedisBackend(backend.url, key_prefix=backend.key_prefix, lease_ttl=30.0,
                        poll_interval=5.0)
    try:
        await slow.wait_and_acquire("q", "holder", 1, WAIT)
        nxt = asyncio.create_task(slow.wait_and_acquire("q", "next", 1, WAIT))
        await until(lambda: _has_waiter(slow), WAIT)
        started = time.monotonic()
        await slow.release("q", "holder")
        await asyncio.wait_for(nxt, WAIT)
        assert time.monotonic() - started < 1.0  # not the 5 s poll
        await slow.release("q", "next")
    finally:
        await slow.close()


async def test_close_fails_waiting_callers(backend: RedisBackend) -> None:
    other = RedisBackend(backend.url, key_prefix=backend.key_prefix, lease_ttl=3.0,
                         poll_interval=0.05)
    await backend.wait_and_acquire("q", "holder", 1, WAIT)
    waiting = asyncio.create_task(other.wait_and_acquire("q", "w", 1, None))
    await until(lambda: _has_waiter(backend), WAIT)
    await other.close()
    with pytest.raises(GenesisError):
        await asyncio.wait_for(waiting, WAIT)
    await backend.release("q", "holder")


async def test_one_item_id_in_two_processes_gets_one_slot(
    backend: RedisBackend, redis_url: str, redis_prefix: str,
) -> None:
    """Across processes the scripts refuse the second caller with an item id: at once when
    the other one holds its slot, or when the other one's grant took their shared place
    in line. Either way one caller holds the slot, the other gets ValueError, and the
    holder's slot and lease are untouched."""
    other = RedisBackend(redis_url, key_prefix=redis_prefix, lease_ttl=1.0, poll_interval=0.02)
    try:
        await backend.wait_and_acquire("q", "x", 1, WAIT)
        with pytest.raises(ValueError, match="already holds a slot"):
            await other.wait_and_acquire("q", "x", 1, WAIT)
        await backend.release("q", "x")

        await backend.wait_and_acquire("q", "holder", 1, WAIT)
        twins = [asyncio.create_task(b.wait_and_acquire("q", "x", 1, WAIT))
                 for b in (backend, other)]
        await until(lambda: _has_waiter(backend), WAIT)
        await backend.release("q", "holder")
        done = await asyncio.wait_for(asyncio.gather(*twins, return_exceptions=True), WAIT)
        assert sorted(type(result).__name__ for result in done) == ["NoneType", "ValueError"]
        winner = backend if done[0] is None else other
        loser = other if winner is backend else backend
        assert await backend.active("q") == 1
        assert ("q", "x") in winner._renewers and not loser._renewers
        await asyncio.sleep(1.5 * winner.lease_ttl)  # the winner's lease was renewed
        assert await backend.active("q") == 1
        await winner.release("q", "x")
        assert await backend.active("q") == 0
    finally:
        await other.close()


async def _place(client: redis.asyncio.Redis, waiting_key: str, item: str) -> Any:
    """An item's place in line as the scripts see it: its score's text."""
    return await client.eval("return redis.call('ZSCORE', KEYS[1], ARGV[1])", 1,
                             waiting_key, item)


async def test_both_scripts_refuse_an_item_that_holds_a_slot(
    backend: RedisBackend, redis_url: str,
) -> None:
    """Asked for an item that holds a slot, both acquire scripts answer "held" and leave
    its lease alone (renewing it is its holder's business), whatever else is in line."""
    keys = backend._keys("q")
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await backend.enqueue("q", "same")
        place = await _place(client, keys[0], "same")
        assert await backend._acquire_many(keys=keys[:4], args=[60_000, "same", 1, place]) \
            == [1]
        soon = time.time() * 1000 + 2000
        await client.zadd(keys[2], {"same": soon})
        await backend.enqueue("q", "next")
        nxt = await _place(client, keys[0], "next")
        assert await backend._acquire_many(
            keys=keys[:4], args=[60_000, "same", 1, place, "next", 1, nxt]) == [-2, 0]
        assert (await backend._acquire(keys=keys, args=["same", 1, 60_000]))[0] == -2
        assert await client.zscore(keys[2], "same") == soon
        assert (await backend.active("q"), await backend.depth("q")) == (1, 1)
    finally:
        await client.aclose()


async def test_waiter_cancelled_as_the_pump_grants_its_slot_ends_cancelled(
    backend: RedisBackend,
) -> None:
    """A cancel landing in the instant the pump hands a waiter with a timeout its slot
    wins: the wait ends cancelled and the slot goes back. (asyncio.wait_for on 3.10 and
    3.11 returned the grant and dropped the cancel: the task went on, holding the slot.)"""
    await backend.wait_and_acquire("q", "holder", 1, WAIT)
    task = asyncio.create_task(backend.wait_and_acquire("q", "w", 1, WAIT))
    await until(lambda: _waits_here(backend), WAIT)
    ask = backend._acquire_many

    async def ask_then_cancel(**kwargs: Any) -> Any:
        results = await ask(**kwargs)
        if 1 in results:
            task.cancel()  # before the pump hands the grant over
        return results

    backend._acquire_many = ask_then_cancel
    await backend.release("q", "holder")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    assert not backend._renewers
    assert (await backend.active("q"), await backend.depth("q")) == (0, 0)


async def test_a_server_that_never_answers_fails_calls_instead_of_hanging() -> None:
    """A stalled or partitioned Redis makes a wait (and the clean-up behind it) fail with
    redis's TimeoutError instead of hanging for good: the backend's client bounds every
    connect and reply by default (redis-py before 8 waits forever unless told), and a URL
    query tunes the bounds."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client hangs up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    default = RedisBackend(f"redis://127.0.0.1:{port}/0")
    quick = RedisBackend(f"redis://127.0.0.1:{port}/0?socket_timeout=0.2&socket_connect_timeout=0.2")
    try:
        bounds = default._redis.connection_pool.connection_kwargs
        assert (bounds["socket_timeout"], bounds["socket_connect_timeout"]) == (5.0, 5.0)
        with pytest.raises(redis.exceptions.TimeoutError):
            await asyncio.wait_for(quick.wait_and_acquire("q", "w", 1, None), WAIT)
    finally:
        await default.close()
        await quick.close()
        server.close()
        await server.wait_closed()
