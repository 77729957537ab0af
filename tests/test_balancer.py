"""Load balancers over both backends, and the Redis one across real processes."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import genesis
from genesis.group import InMemoryLoadBalancer, LoadBalancerBackend, RedisLoadBalancer
from tests.polling import until, zero
from tests.redis_server import kill, run_workers, spawn_python

WAIT = 10.0


@pytest.fixture(params=["memory", "redis"])
async def balancer(request: pytest.FixtureRequest) -> AsyncIterator[LoadBalancerBackend]:
    if request.param == "memory":
        yield InMemoryLoadBalancer()
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    redis_balancer = RedisLoadBalancer(url, key_prefix=prefix, lease_ttl=5.0)
    yield redis_balancer
    await redis_balancer.close()


def test_public_names() -> None:
    assert genesis.InMemoryLoadBalancer is InMemoryLoadBalancer  # type: ignore[attr-defined]
    assert genesis.RedisLoadBalancer is RedisLoadBalancer  # type: ignore[attr-defined]


async def test_counts_and_least_loaded(balancer: LoadBalancerBackend) -> None:
    dests = ["gw-a", "gw-b", "gw-c"]
    assert await balancer.get_least_loaded(dests) == "gw-a"  # ties: first listed
    assert await balancer.get_least_loaded([]) is None
    await balancer.increment("gw-a")
    await balancer.increment("gw-a")
    await balancer.increment("gw-b")
    assert [await balancer.get_count(d) for d in dests] == [2, 1, 0]
    assert await balancer.get_least_loaded(dests) == "gw-c"
    assert await balancer.get_count("gw-c") == 0  # get_least_loaded only reads
    await balancer.decrement("gw-a")
    assert await balancer.get_count("gw-a") == 1


async def test_count_never_negative(balancer: LoadBalancerBackend) -> None:
    await balancer.decrement("nobody")
    await balancer.decrement("nobody")
    assert await balancer.get_count("nobody") == 0
    await balancer.increment("nobody")
    assert await balancer.get_count("nobody") == 1


async def test_acquire_chooses_and_counts(balancer: LoadBalancerBackend) -> None:
    dests = ["x", "y"]
    chosen = [await balancer.acquire(dests) for _ in range(4)]
    assert chosen == ["x", "y", "x", "y"]
    assert await balancer.acquire([]) is None


async def test_concurrent_acquire_respects_limit(balancer: LoadBalancerBackend) -> None:
    dests = ["p", "q", "r"]
    chosen = await asyncio.wait_for(
        asyncio.gather(*(balancer.acquire(dests, limit=5) for _ in range(40))), WAIT
    )
    granted = [c for c in chosen if c is not None]
    assert len(granted) == 15
    assert {d: granted.count(d) for d in dests} == {"p": 5, "q": 5, "r": 5}
    assert [await balancer.get_count(d) for d in dests] == [5, 5, 5]
    await balancer.decrement("q")
    assert await balancer.acquire(dests, limit=5) == "q"


# Two processes pick destinations under a shared limit; each call also bumps a shadow
# counter with INCR, and any value over the limit is recorded as a violation.
WORKER = """
import asyncio, random, sys
import redis.asyncio
from genesis.group import RedisLoadBalancer

async def main(url, prefix, rounds, limit):
    lb = RedisLoadBalancer(url, key_prefix=prefix + "lb:", lease_ttl=5.0)
    client = redis.asyncio.Redis.from_pool(redis.asyncio.BlockingConnectionPool.from_url(url))
    dests = ["gw1", "gw2"]

    async def call():
        while True:
            dest = await lb.acquire(dests, limit=limit)
            if dest is not None:
                break
            await asyncio.sleep(0.001)
        live = await client.incr(prefix + "live:" + dest)
        if live > limit:
            await client.rpush(prefix + "violations", dest)
        await asyncio.sleep(random.random() * 0.004)
        await client.decr(prefix + "live:" + dest)
        await lb.decrement(dest)
        await client.incr(prefix + "calls")

    await asyncio.gather(*(call() for _ in range(rounds)))
    await client.aclose()
    await lb.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""

HOLDER = """
import asyncio, sys
from genesis.group import RedisLoadBalancer

async def main(url, prefix):
    lb = RedisLoadBalancer(url, key_prefix=prefix, lease_ttl=1.0)
    print(await lb.acquire(["gw"]), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_two_processes_never_exceed_limits(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio

    await run_workers(WORKER, (redis_url, redis_prefix, "150", "3"), count=2)
    client = redis.asyncio.Redis.from_url(redis_url)
    lb = RedisLoadBalancer(redis_url, key_prefix=redis_prefix + "lb:")
    try:
        assert await client.lrange(redis_prefix + "violations", 0, -1) == []
        assert int(await client.get(redis_prefix + "calls") or 0) == 300
        assert await lb.get_count("gw1") == 0
        assert await lb.get_count("gw2") == 0
    finally:
        await client.aclose()
        await lb.close()


async def test_crashed_worker_counts_expire(redis_url: str, redis_prefix: str) -> None:
    lb = RedisLoadBalancer(redis_url, key_prefix=redis_prefix, lease_ttl=1.0)
    holder = await spawn_python(HOLDER, redis_url, redis_prefix)
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), WAIT) == b"gw\n"
        await asyncio.sleep(1.5)  # alive: its lease is renewed past the TTL
        assert await lb.get_count("gw") == 1
        holder.send_signal(signal.SIGKILL)
        await asyncio.wait_for(holder.wait(), WAIT)
        await asyncio.sleep(1.2)
        assert await lb.get_count("gw") == 0
    finally:
        await kill(holder)
        await lb.close()


async def test_decrement_of_a_call_counted_elsewhere(redis_url: str, redis_prefix: str) -> None:
    counting = RedisLoadBalancer(redis_url, key_prefix=redis_prefix)
    ending = RedisLoadBalancer(redis_url, key_prefix=redis_prefix)
    try:
        await counting.increment("gw")
        await counting.increment("gw")
        await ending.decrement("gw")  # the hangup was seen by another process
        assert await ending.get_count("gw") == 1
        await ending.decrement("gw")
        await ending.decrement("gw")
        assert await counting.get_count("gw") == 0
    finally:
        await counting.close()
        await ending.close()


# Keeps the Redis server busy (it runs one script at a time) for half a second.
BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
while true do
  t = redis.call('TIME')
  if t[1] * 1000000 + t[2] - start > 500000 then return 1 end
end
"""


async def cancel_behind_busy_script(lb: RedisLoadBalancer, busy_client: Any,
                                    call: Callable[[], Awaitable[object]]) -> None:
    """Start ``call()`` while a busy script holds ``busy_client``'s server, cancel it while
    it waits there, let the script end; then "gw" must end up counted zero."""
    busy = asyncio.ensure_future(busy_client.eval(BUSY, 0))
    await asyncio.sleep(0.05)
    calling = asyncio.ensure_future(call())
    await asyncio.sleep(0.1)  # sent, and queued behind the busy script
    calling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await calling
    await asyncio.wait_for(busy, WAIT)
    await until(lambda: zero(lb.get_count("gw")), WAIT)


async def test_cancelled_acquire_gives_back_what_it_counted(
    redis_url: str, redis_prefix: str
) -> None:
    import redis.asyncio

    lb = RedisLoadBalancer(redis_url, key_prefix=redis_prefix)
    other = redis.asyncio.Redis.from_url(redis_url)
    try:
        await lb.get_least_loaded(["gw"])  # connected, script loaded: acquire sends at once
        # The script runs after its caller left: the count it took is given back.
        await cancel_behind_busy_script(lb, other, lambda: lb.acquire(["gw"]))
    finally:
        await other.aclose()
        await lb.close()


async def test_cancelled_decrement_still_releases(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio

    # One connection: the decrement waits for it while a busy script holds it.
    client = redis.asyncio.Redis.from_pool(
        redis.asyncio.BlockingConnectionPool.from_url(redis_url, max_connections=1)
    )
    lb = RedisLoadBalancer(redis_url, key_prefix=redis_prefix, client=client)
    try:
        assert await lb.acquire(["gw"]) == "gw"
        await cancel_behind_busy_script(lb, client, lambda: lb.decrement("gw"))
    finally:
        await lb.close()


async def test_release_failing_after_its_caller_left_is_logged(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis.asyncio
    from redis.exceptions import ResponseError

    lb = RedisLoadBalancer(redis_url, key_prefix=redis_prefix)
    other = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await lb.acquire(["gw"]) == "gw"
        # The key no longer holds a count: the release script fails on it (WRONGTYPE).
        await other.delete(redis_prefix + "gw")
        await other.set(redis_prefix + "gw", "not a count")
        decrementing = asyncio.ensure_future(lb.decrement("gw"))
        await asyncio.sleep(0)  # its release is under way, shielded from the caller
        decrementing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await decrementing

        def logged() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "genesis.group" and r.exc_info]

        await until(logged, WAIT)  # nobody awaits the release any more
        [record] = logged()
        assert record.levelno == logging.ERROR
        assert "load balancer" in record.getMessage() and "gw" in record.getMessage()
        assert record.exc_info is not None and isinstance(record.exc_info[1], ResponseError)
    finally:
        await other.aclose()
        await lb.close()
