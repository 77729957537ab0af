"""Ring groups and the load balancers that spread calls over destinations.

A balancer counts the calls active on each destination, from the moment a leg is
chosen for it until that leg ends; counting until answer (as the release this
project replaces did) lets a burst of ringing legs overload one gateway.
Choosing and counting must be one atomic step, or two dialers read the same
"least loaded" count and both pick it: :meth:`LoadBalancerBackend.acquire` is that
step (a plain comparison in memory, one Lua script in Redis).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)


class LoadBalancerBackend(ABC):
    """Active-call counters per destination."""

    @abstractmethod
    async def increment(self, destination: str) -> None:
        """Count one more active call on ``destination``."""

    @abstractmethod
    async def decrement(self, destination: str) -> None:
        """Count one call fewer on ``destination``; a count never goes below zero."""

    @abstractmethod
    async def get_count(self, destination: str) -> int:
        """Active calls on ``destination``."""

    @abstractmethod
    async def get_least_loaded(self, destinations: Sequence[str]) -> str | None:
        """The destination with the fewest active calls (first on ties), None if empty.

        Read-only: use :meth:`acquire` to choose and count in one atomic step.
        """

    @abstractmethod
    async def acquire(self, destinations: Sequence[str], limit: int | None = None) -> str | None:
        """Atomically pick the least loaded destination below ``limit`` and count a call on it.

        Returns None when ``destinations`` is empty or every one is at its limit.
        """

    async def close(self) -> None:  # noqa: B027 - in-memory counters hold no resources
        """Release connections and stop background renewals."""


class InMemoryLoadBalancer(LoadBalancerBackend):
    """Counters for one process. Atomic because nothing in :meth:`acquire` awaits."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    async def increment(self, destination: str) -> None:
        self._counts[destination] = self._counts.get(destination, 0) + 1

    async def decrement(self, destination: str) -> None:
        count = self._counts.get(destination, 0)
        if count <= 1:
            self._counts.pop(destination, None)
        else:
            self._counts[destination] = count - 1

    async def get_count(self, destination: str) -> int:
        return self._counts.get(destination, 0)

    async def get_least_loaded(self, destinations: Sequence[str]) -> str | None:
        return self._pick(destinations, None)

    async def acquire(self, destinations: Sequence[str], limit: int | None = None) -> str | None:
        chosen = self._pick(destinations, limit)
        if chosen is not None:
            self._counts[chosen] = self._counts.get(chosen, 0) + 1
        return chosen

    def _pick(self, destinations: Sequence[str], limit: int | None) -> str | None:
        best: str | None = None
        best_count = 0
        for destination in destinations:
            count = self._counts.get(destination, 0)
            if limit is not None and count >= limit:
                continue
            if best is None or count < best_count:
                best, best_count = destination, count
        return best


# Counts are sorted sets of lease tokens scored by expiry (Redis clock, ms): a crashed
# process stops renewing its tokens and they drop out of every count after lease_ttl.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: destination sets in preference order. ARGV: token, ttl_ms, limit (-1: none),
# count (1: add the token to the chosen set, 0: only choose). Returns the 1-based index
# of the chosen destination, 0 if none qualifies.
_ACQUIRE = (
    _NOW
    + """
local limit = tonumber(ARGV[3])
local best, best_count = 0, 0
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local count = redis.call('ZCARD', key)
  if (limit < 0 or count < limit) and (best == 0 or count < best_count) then
    best, best_count = i, count
  end
end
if best > 0 and ARGV[4] == '1' then
  redis.call('ZADD', KEYS[best], now + tonumber(ARGV[2]), ARGV[1])
end
return best
"""
)

# KEYS: one destination set. ARGV: this process's token for it, or '' to drop the
# lease closest to expiry (a call counted by another process ended here).
_RELEASE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[1] ~= '' and redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then return 1 end
if ARGV[1] == '' then return #redis.call('ZPOPMIN', KEYS[1]) / 2 end
return 0
"""
)

_COUNT = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS: destination sets; ARGV: ttl_ms then one token per key. XX: a token another
# process already released stays released.
_RENEW = (
    _NOW
    + """
local expiry = now + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', expiry, ARGV[i + 1])
end
return #KEYS
"""
)


class RedisLoadBalancer(LoadBalancerBackend):
    """Counters shared by every process using the same Redis and ``key_prefix``.

    Each counted call is a lease token held by the process that counted it and
    renewed every third of ``lease_ttl``; a process that crashes leaves counts that
    expire after ``lease_ttl`` seconds instead of blocking a destination forever.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379",
        key_prefix: str = "genesis:lb:",
        *,
        lease_ttl: float = 60.0,
        max_connections: int = 32,
        client: Any = None,
    ) -> None:
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be positive, got {lease_ttl}")
        if client is None:
            import redis.asyncio  # optional dependency: loaded only when Redis is used

            # A blocking pool: a burst of calls waits for a free connection instead of
            # failing with "Too many connections".
            client = redis.asyncio.Redis.from_pool(
                redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=max_connections)
            )
        self.url = url
        self.key_prefix = key_prefix
        self.lease_ttl = lease_ttl
        self._redis = client
        self._ttl_ms = max(1, int(lease_ttl * 1000))
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._count = client.register_script(_COUNT)
        self._renew = client.register_script(_RENEW)
        self._worker = uuid.uuid4().hex
        self._serial = itertools.count()
        self._tokens: dict[str, list[str]] = {}
        self._renewer: asyncio.Task[None] | None = None

    def _key(self, destination: str) -> str:
        return self.key_prefix + destination

    async def increment(self, destination: str) -> None:
        await self.acquire([destination])

    async def decrement(self, destination: str) -> None:
        tokens = self._tokens.get(destination)
        token = tokens.pop() if tokens else ""
        if tokens is not None and not tokens:
            del self._tokens[destination]
        await self._release(keys=[self._key(destination)], args=[token])

    async def get_count(self, destination: str) -> int:
        return int(await self._count(keys=[self._key(destination)]))

    async def get_least_loaded(self, destinations: Sequence[str]) -> str | None:
        if not destinations:
            return None
        index = await self._acquire(
            keys=[self._key(d) for d in destinations], args=["", self._ttl_ms, -1, 0]
        )
        return destinations[int(index) - 1] if index else None

    async def acquire(self, destinations: Sequence[str], limit: int | None = None) -> str | None:
        if not destinations:
            return None
        token = f"{self._worker}:{next(self._serial)}"
        index = await self._acquire(
            keys=[self._key(d) for d in destinations],
            args=[token, self._ttl_ms, -1 if limit is None else limit, 1],
        )
        if not index:
            return None
        chosen = destinations[int(index) - 1]
        self._tokens.setdefault(chosen, []).append(token)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._keep_leases())
        return chosen

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        await self._redis.aclose()

    async def _keep_leases(self) -> None:
        while self._tokens:
            await asyncio.sleep(self.lease_ttl / 3)
            keys: list[str] = []
            tokens: list[str] = []
            for destination, held in self._tokens.items():
                keys.extend(itertools.repeat(self._key(destination), len(held)))
                tokens.extend(held)
            if not keys:
                return
            try:
                await self._renew(keys=keys, args=[self._ttl_ms, *tokens])
            except Exception:
                # Two more renewals happen before a lease lapses: log and keep going.
                logger.warning("renewing load balancer leases failed", exc_info=True)
