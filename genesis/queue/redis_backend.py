"""A queue shared by several processes through Redis.

Layout per queue (``<prefix><queue_id>:…``): ``waiting`` is a sorted set scored by an
arrival counter (``seq``), so its rank is the FIFO position; ``beats`` scores each waiter
with the time its heartbeat expires; ``active`` scores each holder with the time its
lease expires. Every decision runs inside one Lua script using Redis's own clock, so
processes never race each other and their clocks never need to agree. A process that
dies stops renewing: its waiters and slots expire after ``lease_ttl`` seconds and the
next script run reclaims them. This fixes the release this project replaces, whose
backend had no ``depth()``, deadlocked and never removed a cancelled waiter.

Waiters poll every ``poll_interval`` seconds (a slot freed by another process is seen
within that delay); a slot freed in this process wakes local waiters at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from genesis._redis import connect
from genesis.exceptions import QueueTimeoutError
from genesis.queue.base import QueueBackend

logger = logging.getLogger(__name__)

# Milliseconds from Redis's clock: one time source for every process.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Drop waiters whose heartbeat and holders whose lease ran out: their process is gone.
_PURGE = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, member in ipairs(stale) do redis.call('ZREM', KEYS[1], member) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
"""

# KEYS: waiting, beats, active, seq. ARGV: item, ttl_ms.
_ENQUEUE = (
    _NOW
    + """
local ttl = tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[4]), ARGV[1])
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
return 1
"""
)

# KEYS: waiting, beats, active, seq. ARGV: item, max_concurrent, ttl_ms.
# Returns 1 when the item now holds a slot, 0 when it must keep waiting.
_ACQUIRE = (
    _NOW
    + _PURGE
    + """
local ttl = tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
  return 1
end
local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
if not rank then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[4]), ARGV[1])
  rank = redis.call('ZRANK', KEYS[1], ARGV[1])
end
if rank < tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[3]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
  return 1
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
return 0
"""
)

# KEYS: waiting, beats, active. ARGV: item. Removes the item wherever it is.
_FORGET = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[3], ARGV[1])
"""

# KEYS: active. ARGV: item, ttl_ms. 0 means the lease was already lost.
_RENEW = (
    _NOW
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS: waiting, beats, active. ARGV: 0 for the waiting count, 1 for the active count.
_COUNT = (
    _NOW
    + _PURGE
    + """
if ARGV[1] == '1' then return redis.call('ZCARD', KEYS[3]) end
return redis.call('ZCARD', KEYS[1])
"""
)


class RedisBackend(QueueBackend):
    """Queues in Redis, shared by every process using the same ``url`` and ``key_prefix``.

    ``lease_ttl`` bounds how long a crashed process's slots and places stay taken;
    live holders renew their lease every third of it in the background.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379",
        key_prefix: str = "genesis:queue:",
        *,
        lease_ttl: float = 15.0,
        poll_interval: float = 0.05,
        max_connections: int = 32,
        client: Any = None,
    ) -> None:
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be positive, got {lease_ttl}")
        if not 0 < poll_interval <= lease_ttl / 3:
            raise ValueError("poll_interval must be positive and at most lease_ttl / 3")
        if client is None:
            client = connect(url, max_connections)
        self.url = url
        self.key_prefix = key_prefix
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self._redis = client
        self._ttl_ms = max(1, int(lease_ttl * 1000))
        self._enqueue = client.register_script(_ENQUEUE)
        self._acquire = client.register_script(_ACQUIRE)
        self._forget = client.register_script(_FORGET)
        self._renew = client.register_script(_RENEW)
        self._count = client.register_script(_COUNT)
        self._wakeups: dict[str, asyncio.Event] = {}
        self._renewers: dict[tuple[str, str], asyncio.Task[None]] = {}

    def _keys(self, queue_id: str) -> list[str]:
        base = f"{self.key_prefix}{queue_id}:"
        return [base + "waiting", base + "beats", base + "active", base + "seq"]

    async def enqueue(self, queue_id: str, item_id: str) -> None:
        await self._enqueue(keys=self._keys(queue_id), args=[item_id, self._ttl_ms])

    async def wait_and_acquire(
        self,
        queue_id: str,
        item_id: str,
        max_concurrent: int = 1,
        timeout: float | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        keys = self._keys(queue_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not await self._acquire(keys=keys, args=[item_id, max_concurrent, self._ttl_ms]):
                delay = self.poll_interval
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise QueueTimeoutError(f"no slot of queue {queue_id!r} within {timeout} s")
                    delay = min(delay, remaining)
                wakeup = self._wakeups.setdefault(queue_id, asyncio.Event())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), delay)
        except BaseException:
            # Timeout, cancellation or a Redis error: whether or not the last script ran,
            # removing the item everywhere leaves neither a ghost waiter nor a leaked slot.
            await asyncio.shield(self._forget(keys=keys[:3], args=[item_id]))
            raise
        self._renewers[(queue_id, item_id)] = asyncio.create_task(
            self._keep_lease(keys[2], queue_id, item_id)
        )

    async def release(self, queue_id: str, item_id: str) -> None:
        renewer = self._renewers.pop((queue_id, item_id), None)
        if renewer is not None:
            renewer.cancel()
        await self._forget(keys=self._keys(queue_id)[:3], args=[item_id])
        wakeup = self._wakeups.pop(queue_id, None)
        if wakeup is not None:
            wakeup.set()

    async def depth(self, queue_id: str) -> int:
        return int(await self._count(keys=self._keys(queue_id)[:3], args=[0]))

    async def active(self, queue_id: str) -> int:
        return int(await self._count(keys=self._keys(queue_id)[:3], args=[1]))

    async def close(self) -> None:
        renewers = list(self._renewers.values())
        self._renewers.clear()
        for renewer in renewers:
            renewer.cancel()
        await asyncio.gather(*renewers, return_exceptions=True)
        await self._redis.aclose()

    async def _keep_lease(self, active_key: str, queue_id: str, item_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                renewed = await self._renew(keys=[active_key], args=[item_id, self._ttl_ms])
            except Exception:
                # A Redis hiccup: the lease has two more renewal chances before it lapses.
                logger.warning("renewing queue %r slot %r failed", queue_id, item_id, exc_info=True)
                continue
            if not renewed:
                logger.error(
                    "queue %r slot %r lease expired while held (process stalled for over %s s); "
                    "the slot may be given to another waiter",
                    queue_id,
                    item_id,
                    self.lease_ttl,
                )
                self._renewers.pop((queue_id, item_id), None)
                return
