"""A queue shared by several processes through Redis.

Layout per queue (``<prefix><queue_id>:…``): ``waiting`` is a sorted set scored by an
arrival counter (``seq``), so its rank is the FIFO position; ``beats`` scores each waiter
with the time its heartbeat expires; ``active`` scores each holder with the time its
lease expires; ``released`` holds the place (its ``seq`` score) of each item
:meth:`RedisBackend.release` took out of line, scored with the time that news expires, so
its wait, in whichever process, can tell being released from being purged as dead. A wait
knows its item by that place, not by the item id alone: a place the same id takes later
(a new wait, or :meth:`RedisBackend.enqueue`) is not the released wait's. Every decision
runs inside one Lua script using Redis's own clock, so processes never race each other
and their clocks never need to agree. A process that dies stops renewing: its waiters
and slots expire after ``lease_ttl`` seconds and the next script run reclaims them. This
fixes the release this project replaces, whose backend had no ``depth()``, deadlocked and
never removed a cancelled waiter.

A waiter first asks for its slot on its own (which also takes its place in line). If it
must wait, it joins its process's local line for that queue, and one task per process and
queue (the pump) asks for every waiting item of that line in one script run: every
``poll_interval`` seconds (a slot freed by another process is seen within that delay),
or at once when a slot is freed in this process. So Redis sees one call per poll per
process and queue, however many calls are waiting, and each run also renews the
heartbeat of every waiter it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from genesis._redis import connect
from genesis._wait import wait_for
from genesis.exceptions import GenesisError, QueueReleasedError, QueueTimeoutError
from genesis.queue.base import QueueBackend, already_holds, already_waiting

logger = logging.getLogger(__name__)

# What the acquire scripts answer for an item whose slot another caller holds.
_HELD = -2
# What the pump's script answers for an item that release() took out of line.
_RELEASED = -3

# Milliseconds from Redis's clock: one time source for every process.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Drop waiters whose heartbeat and holders whose lease ran out (their process is gone),
# and news of releases old enough that no live waiter can still be about to ask.
_PURGE = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, member in ipairs(stale) do redis.call('ZREM', KEYS[1], member) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
"""

# The rule both acquire scripts share (KEYS: waiting, beats, active, …): the item at
# ``rank`` in line takes a slot when the waiters still ahead of it (``rank`` less the
# ``ahead`` already granted by this same call) fit in the slots left; else it stays in
# line with its heartbeat renewed. ``grant``: 1 granted, 0 waiting. Before it, both
# scripts answer _HELD for an item that holds a slot already: its holder is another
# caller with the same item id (a caller's own grant is never asked about again), who
# keeps the slot.
_GRANT = f"""
local HELD = {_HELD}
local function grant(item, rank, ahead, limit, ttl)
  if rank - ahead < limit - redis.call('ZCARD', KEYS[3]) then
    redis.call('ZREM', KEYS[1], item)
    redis.call('ZREM', KEYS[2], item)
    redis.call('ZADD', KEYS[3], now + ttl, item)
    return 1
  end
  redis.call('ZADD', KEYS[2], now + ttl, item)
  return 0
end
"""

# KEYS: waiting, beats, active, released, seq. ARGV: item, ttl_ms.
_ENQUEUE = (
    _NOW
    + """
local ttl = tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[5]), ARGV[1])
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
return 1
"""
)

# KEYS: waiting, beats, active, released, seq. ARGV: item, max_concurrent, ttl_ms.
# Returns {answer, place}: answer 1 when the item now holds a slot, 0 when it must keep
# waiting (place: the score of its place in line, which the pump passes back), _HELD when
# another caller holds the item's slot.
_ACQUIRE = (
    _NOW
    + _PURGE
    + _GRANT
    + """
local ttl = tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return {HELD, ''} end
local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
if not rank then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[5]), ARGV[1])
  rank = redis.call('ZRANK', KEYS[1], ARGV[1])
end
local place = redis.call('ZSCORE', KEYS[1], ARGV[1])
if grant(ARGV[1], rank, 0, tonumber(ARGV[2]), ttl) == 1 then return {1, ''} end
return {0, place}
"""
)

# KEYS: waiting, beats, active, released. ARGV: ttl_ms, then item, max_concurrent and
# place triples (place: the one _ACQUIRE answered). One result per triple: 1 the item
# holds a slot, 0 it keeps waiting (heartbeat renewed), _RELEASED release() took that
# place out of line (whether or not the item id has taken another place since), -1 the
# place is gone otherwise (purged as dead), _HELD another caller holds its slot. Items are
# judged in line order, each against the slots left by those granted before it.
_ACQUIRE_MANY = (
    _NOW
    + _PURGE
    + _GRANT
    + f"local RELEASED = {_RELEASED}\n"
    + """
local ttl = tonumber(ARGV[1])
local results = {}
local order = {}
local items = {}
for i = 2, #ARGV, 3 do
  local item = ARGV[i]
  local idx = #items + 1
  items[idx] = i
  if redis.call('ZSCORE', KEYS[3], item) then
    results[idx] = HELD
  else
    if redis.call('ZSCORE', KEYS[1], item) == ARGV[i + 2] then
      order[#order + 1] = {redis.call('ZRANK', KEYS[1], item), idx}
    elseif redis.call('ZREM', KEYS[4], ARGV[i + 2]) == 1 then
      results[idx] = RELEASED
    else
      results[idx] = -1
    end
  end
end
table.sort(order, function(a, b) return a[1] < b[1] end)
local granted = 0
for _, entry in ipairs(order) do
  local idx = entry[2]
  -- Every item granted before this one was ahead of it in line.
  local i = items[idx]
  results[idx] = grant(ARGV[i], entry[1], granted, tonumber(ARGV[i + 1]), ttl)
  granted = granted + results[idx]
end
return results
"""
)

# KEYS: waiting, beats, active, released. ARGV: item, ttl_ms, place. Frees the item's slot
# and takes it out of line: out of any place if ``place`` is '', else only out of that
# one (a leaving wait must not take a later caller's place). If it was in line and ttl_ms
# is not 0, records that its place was released, for its wait to learn (0: the wait
# itself is leaving, nobody is left to tell). Returns the place it took, or ''.
_FORGET = (
    _NOW
    + """
local ttl = tonumber(ARGV[2])
local place = redis.call('ZSCORE', KEYS[1], ARGV[1])
if place and (ARGV[3] == '' or ARGV[3] == place) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  if ttl > 0 then redis.call('ZADD', KEYS[4], now + ttl, place) end
else
  place = ''
end
redis.call('ZREM', KEYS[3], ARGV[1])
return place
"""
)

# KEYS: active. ARGV: item, ttl_ms. 0 means the lease was already lost.
_RENEW = (
    _NOW
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS: waiting, beats, active, released. ARGV: 0 for the waiting count, 1 for the active
# count.
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
    live holders renew their lease every third of it in the background, and live waiters
    their place with every poll. A place taken with :meth:`enqueue` has nobody renewing
    it until a wait for the item starts, so it lapses ``lease_ttl`` seconds after the
    last ``enqueue`` of the item.

    :meth:`release` of a waiting item takes it out of line for good: its wait, in this
    process or another, raises :class:`~genesis.queue.QueueReleasedError` once its
    process next asks (at once when the release ran in the same process, else within
    ``poll_interval``). A waiter purged as dead, its process having stalled for longer
    than ``lease_ttl``, takes a new place at the back instead.

    Each Redis call fails with redis-py's TimeoutError when the server does not answer
    within the client's socket timeout (5 s unless the URL's ``socket_timeout`` says
    otherwise); a wait's ``timeout`` bounds the wait for a slot, not a stalled server.
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
        self._acquire_many = client.register_script(_ACQUIRE_MANY)
        self._forget = client.register_script(_FORGET)
        self._renew = client.register_script(_RENEW)
        self._count = client.register_script(_COUNT)
        self._lines: dict[str, _Line] = {}
        self._renewers: dict[tuple[str, str], asyncio.Task[None]] = {}
        # (queue, item) of every wait going on in this process: a second caller with the
        # same item is refused here. The scripts refuse only an item that holds a slot: two
        # processes waiting with one item id share its place (item ids are the caller's to
        # keep unique across processes).
        self._waits: dict[tuple[str, str], _Wait] = {}

    def _keys(self, queue_id: str) -> list[str]:
        base = f"{self.key_prefix}{queue_id}:"
        return [base + "waiting", base + "beats", base + "active", base + "released",
                base + "seq"]

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
        wait = (queue_id, item_id)
        if wait in self._renewers:
            raise already_holds(queue_id, item_id)
        if wait in self._waits:
            raise already_waiting(queue_id, item_id)
        keys = self._keys(queue_id)
        state = self._waits[wait] = _Wait()
        try:
            answer = await self._wait(keys, queue_id, item_id, max_concurrent, timeout, state)
        finally:
            # release() of its place ends the wait here at once, and a new wait with the
            # same item may have started since: it is that one's now.
            if self._waits.get(wait) is state:
                del self._waits[wait]
        if answer == _HELD:
            raise already_holds(queue_id, item_id)
        if answer == _RELEASED:
            raise QueueReleasedError(f"item {item_id!r} was released from queue {queue_id!r}")
        self._renewers[wait] = asyncio.create_task(self._keep_lease(keys[2], queue_id, item_id))

    async def _wait(self, keys: list[str], queue_id: str, item_id: str, max_concurrent: int,
                    timeout: float | None, state: _Wait) -> int:
        """Wait for ``item_id``'s slot (``keys``: the queue's): 1 once it holds it, or
        _HELD or _RELEASED (nothing left to remove)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            # On its own first: admission at once needs no pump, and this takes the
            # item's place in line (again, if it was purged as dead while it waited).
            answer, state.place = await self._acquire(
                keys=keys, args=[item_id, max_concurrent, self._ttl_ms])
            while answer == 0:
                line = self._lines.get(queue_id)
                if line is None:
                    line = self._lines[queue_id] = _Line()
                granted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                line.waiters[granted] = (item_id, max_concurrent, state)
                state.granted = granted
                if line.pump is None:
                    line.pump = asyncio.create_task(self._pump(queue_id, line))
                # asyncio.wait, not wait_for: on 3.10 and 3.11 wait_for returns the result
                # of a future set in the same instant as a cancellation and drops the
                # cancellation, so the cancelled task would go on holding the slot.
                left = None if deadline is None else deadline - time.monotonic()
                try:
                    await asyncio.wait((granted,), timeout=left)
                finally:
                    line.waiters.pop(granted, None)
                    state.granted = None
                    # Done from here on: a pump run in flight leaves it alone.
                    granted.cancel()
                if granted.cancelled():
                    raise QueueTimeoutError(f"no slot of queue {queue_id!r} within {timeout} s")
                answer = granted.result()
                if answer == -1:  # purged as dead: take a place again
                    state.place = ""
                    answer, state.place = await self._acquire(
                        keys=keys, args=[item_id, max_concurrent, self._ttl_ms])
        except BaseException:
            # Timeout, cancellation or a Redis error: whether or not the last script ran,
            # removing the item (from its own place only, once it knows it) leaves neither
            # a ghost waiter nor a leaked slot. A released wait has nothing left: its item
            # id may be a later caller's by now.
            try:
                if not state.released:
                    await asyncio.shield(
                        self._forget(keys=keys[:4], args=[item_id, 0, state.place]))
            except Exception:
                # The cause stays what is raised; the item's heartbeat then runs out.
                logger.warning("removing queue %r item %r failed", queue_id, item_id,
                               exc_info=True)
            raise
        # _HELD: the slot is another process's caller's, with the same item id; if this
        # caller had a place in line, that caller's grant took it. _RELEASED: release()
        # already removed the item. Either way nothing is left here that is this caller's
        # to remove.
        return int(answer)

    async def _pump(self, queue_id: str, line: _Line) -> None:
        """Ask for every waiting item of this process's ``line`` in one script run, until
        the line is empty: every ``poll_interval``, or at once when :meth:`release` frees
        a slot here. Each waiter learns its result through its future."""
        keys = self._keys(queue_id)[:4]
        try:
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await wait_for(line.wake.wait(), self.poll_interval)
                line.wake.clear()
                if not line.waiters:
                    return
                asked = list(line.waiters.items())
                args: list[object] = [self._ttl_ms]
                for _granted, (item_id, max_concurrent, state) in asked:
                    args += [item_id, max_concurrent, state.place]
                try:
                    results = await self._acquire_many(keys=keys, args=args)
                except Exception as exc:
                    # Each waiter fails as it would have failed asking on its own.
                    for granted, _asked in asked:
                        if not granted.done():
                            granted.set_exception(exc)
                    continue
                for (granted, (_id, _limit, state)), result in zip(asked, results,
                                                                   strict=True):
                    # A waiter that gave up meanwhile removes its item itself.
                    if result != 0 and not granted.done():
                        if result == _RELEASED:
                            state.released = True
                        granted.set_result(int(result))
        finally:
            line.pump = None
            if self._lines.get(queue_id) is line and not line.waiters:
                del self._lines[queue_id]

    async def release(self, queue_id: str, item_id: str) -> None:
        renewer = self._renewers.pop((queue_id, item_id), None)
        if renewer is not None:
            renewer.cancel()
        place = await self._forget(keys=self._keys(queue_id)[:4],
                                   args=[item_id, self._ttl_ms, ""])
        wait = self._waits.get((queue_id, item_id))
        if place and wait is not None and wait.place == place:
            # Its wait here is over at once, not at the next poll: a new wait with the same
            # item, started right after this call, is not refused as a second caller.
            del self._waits[(queue_id, item_id)]
            wait.released = True
            if wait.granted is not None and not wait.granted.done():
                wait.granted.set_result(_RELEASED)
        line = self._lines.get(queue_id)
        if line is not None:
            line.wake.set()

    async def depth(self, queue_id: str) -> int:
        return int(await self._count(keys=self._keys(queue_id)[:4], args=[0]))

    async def active(self, queue_id: str) -> int:
        return int(await self._count(keys=self._keys(queue_id)[:4], args=[1]))

    async def close(self) -> None:
        pumps = []
        for line in list(self._lines.values()):
            for granted in line.waiters:
                if not granted.done():
                    granted.set_exception(GenesisError("the queue backend was closed"))
            if line.pump is not None:
                line.pump.cancel()
                pumps.append(line.pump)
        await asyncio.gather(*pumps, return_exceptions=True)
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


class _Line:
    """One queue's waiters in this process, and the task asking Redis for all of them."""

    __slots__ = ("pump", "waiters", "wake")

    def __init__(self) -> None:
        # Each waiter's future (set to the script's answer for its item: 1 admitted,
        # _RELEASED taken out of line by release(), -1 no longer in line otherwise, _HELD
        # another caller holds its slot) -> (item id, max_concurrent, its wait).
        self.waiters: dict[asyncio.Future[int], tuple[str, int, _Wait]] = {}
        self.pump: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()


class _Wait:
    """One wait going on in this process."""

    __slots__ = ("granted", "place", "released")

    def __init__(self) -> None:
        # The score of its place in line, as _ACQUIRE answered it ('' until it has one):
        # what tells its place from one its item id takes later.
        self.place: bytes | str = ""
        # Its future while the pump asks for it.
        self.granted: asyncio.Future[int] | None = None
        # Set once release() took its place: nothing is left in Redis for it to remove.
        self.released = False
