"""Ring groups and the load balancers that spread calls over destinations.

:meth:`RingGroup.ring` originates legs (:meth:`Channel.create`, ``bgapi`` so they ring
at once on one connection) and returns the first to answer. It only ever touches legs
it created, addressed by uuid: the caller's channel of an outbound session is left
alone. Every leg it created and does not return is hung up, whatever way ``ring``
ends (answer elsewhere, timeout, cancellation, error).

A balancer counts the calls active on each destination, from the moment a leg is
chosen for it until that leg ends; counting until answer (as the release this
project replaces did) lets a burst of ringing legs overload one gateway. A leg whose
hangup was lost with the connection ends when the reconnect shows it gone, or when
the connection ends for good (``Channel`` watches the connection's gaps).
Choosing and counting must be one atomic step, or two dialers read the same
"least loaded" count and both pick it: :meth:`LoadBalancerBackend.acquire` is that
step (a plain comparison in memory, one Lua script in Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Mapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

from genesis import tracing
from genesis._redis import connect
from genesis.channel import Channel, check_dial, instruments
from genesis.exceptions import ChannelError, TimeoutError
from genesis.types import ChannelState

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from genesis.protocol.base import Protocol as ESLProtocol

logger = logging.getLogger(__name__)

# Background decrements, releases and hangups: the event loop only keeps weak references
# to tasks, so these are referenced here until they end.
_background: set[asyncio.Task[Any]] = set()


def _keep(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def _spawn(coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
    """Run ``coro`` in the background. Nobody awaits it, so a failure is logged here,
    as ``"<what> failed"`` with its traceback; otherwise asyncio would only report a
    "Task exception was never retrieved" whenever the task happens to be collected."""
    task = _keep(coro)
    task.add_done_callback(functools.partial(_log_failure, what))
    return task


def _log_failure(what: str, task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("%s failed", what, exc_info=exc)


async def _shielded(coro: Coroutine[Any, Any, Any], what: str) -> Any:
    """Await ``coro`` to its end even if the caller is cancelled meanwhile.

    A caller still waiting gets the failure; once it is cancelled nobody will, so the
    failure is logged as by :func:`_spawn`.
    """
    task = _keep(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(functools.partial(_log_failure, what))
        raise


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
            client = connect(url, max_connections)
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
        # The token is no longer renewed: a cancelled caller must not leave it counted
        # until its lease lapses, so the release runs to its end regardless.
        await _shielded(
            self._release(keys=[self._key(destination)], args=[token]),
            f"releasing a load balancer count on {destination}",
        )

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
        script = _keep(
            self._acquire(
                keys=[self._key(d) for d in destinations],
                args=[token, self._ttl_ms, -1 if limit is None else limit, 1],
            )
        )
        try:
            # Shielded: once sent, the script counts whether or not this caller stays.
            index = await asyncio.shield(script)
        except asyncio.CancelledError:
            script.add_done_callback(lambda done: self._give_back(done, destinations, token))
            raise
        if not index:
            return None
        chosen = destinations[int(index) - 1]
        self._tokens.setdefault(chosen, []).append(token)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._keep_leases())
        return chosen

    def _give_back(
        self, script: asyncio.Future[Any], destinations: Sequence[str], token: str
    ) -> None:
        """Release what an acquire whose caller was cancelled counted after all."""
        if script.cancelled():
            return
        if (exc := script.exception()) is not None:
            # Perhaps counted before failing: that lease is not renewed and lapses.
            logger.error(
                "load balancer acquire among %s failed after its caller was cancelled",
                list(destinations),
                exc_info=exc,
            )
            return
        if not script.result():
            return
        destination = destinations[int(script.result()) - 1]
        _spawn(
            self._release(keys=[self._key(destination)], args=[token]),
            f"giving back the load balancer count on {destination} of a cancelled acquire",
        )

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


class RingMode(str, Enum):
    """How a ring group reaches its destinations."""

    PARALLEL = "parallel"
    SEQUENTIAL = "sequential"
    BALANCING = "balancing"


class RingGroup:
    """Ring several destinations and keep the leg that answers."""

    @classmethod
    async def ring(
        cls,
        protocol: ESLProtocol,
        group: Sequence[str],
        mode: RingMode = RingMode.PARALLEL,
        timeout: float = 30.0,
        variables: Mapping[str, object] | None = None,
        balancer: LoadBalancerBackend | None = None,
    ) -> Channel | None:
        """Return the first leg to answer (parked), or None if none answered.

        PARALLEL rings every destination at once, ``timeout`` counted from the start.
        SEQUENTIAL rings them one after another, each for ``timeout``. BALANCING rings
        one at a time in the order the balancer picks (least loaded first, counted
        atomically), each for ``timeout``; it needs a ``balancer`` (ValueError). With a
        balancer, each leg counts on its destination from the moment it is chosen until
        it ends.
        """
        mode = RingMode(mode)
        if mode is RingMode.BALANCING and balancer is None:
            raise ValueError("RingMode.BALANCING needs a balancer")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        for destination in group:
            # Refused before anything rings or is counted, not halfway through the group.
            check_dial(destination, variables)
        run = _Ring(protocol, list(group), mode, timeout, variables, balancer)
        tracer = tracing.tracer()
        meters = instruments()
        if tracer is None and meters is None:
            return await run.run(None)
        started = time.monotonic()
        outcome = "error"
        try:
            winner = await cls._traced(run, tracer)
            outcome = "answered" if winner is not None else "no_answer"
            return winner
        finally:
            if meters is not None:
                meters.record("ring_group.ring", outcome, time.monotonic() - started)

    @staticmethod
    async def _traced(run: _Ring, tracer: Tracer | None) -> Channel | None:
        if tracer is None:
            return await run.run(None)
        with tracer.start_as_current_span("ring_group.ring") as span:
            if not span.is_recording():
                return await run.run(None)
            span.set_attributes(
                {
                    "ring_group.mode": run.mode.value,
                    "ring_group.size": len(run.group),
                    "ring_group.timeout": run.timeout,
                    "ring_group.has_balancer": run.balancer is not None,
                    "ring_group.has_variables": bool(run.variables),
                    "ring_group.balanced": run.mode is RingMode.BALANCING,
                }
            )
            return await run.run(span)


class _Ring:
    """One ``ring`` call: the legs it created, so all but the winner can be hung up."""

    def __init__(
        self,
        protocol: ESLProtocol,
        group: list[str],
        mode: RingMode,
        timeout: float,
        variables: Mapping[str, object] | None,
        balancer: LoadBalancerBackend | None,
    ) -> None:
        self.protocol = protocol
        self.group = group
        self.mode = mode
        self.timeout = timeout
        self.variables = variables
        self.balancer = balancer
        self.legs: list[Channel] = []

    async def run(self, span: Span | None) -> Channel | None:
        started = time.monotonic()
        winner: Channel | None = None
        try:
            try:
                if self.mode is RingMode.PARALLEL:
                    winner = await self._parallel()
                else:
                    winner = await self._one_by_one()
            finally:
                # Shielded: a cancelled ring must still hang up what it rang.
                await _shielded(self._hangup_losers(winner), "hanging up a ring group's legs")
        except BaseException as exc:
            if winner is not None:
                # Cancelled while the losers were hung up: the winner will never reach
                # the caller, so nobody else would ever hang it up.
                _spawn(_hang_up([winner]), f"hanging up ring group leg {winner.uuid}")
            if span is not None:
                cancelled = isinstance(exc, asyncio.CancelledError)
                span.set_attribute("ring_group.result", "cancelled" if cancelled else "error")
                span.set_attribute("ring_group.error", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if span is not None:
                span.set_attribute("ring_group.duration", time.monotonic() - started)
        if span is not None:
            span.set_attribute("ring_group.result", "answered" if winner else "no_answer")
            if winner is not None:
                span.set_attribute("ring_group.answered_uuid", winner.uuid)
                span.set_attribute("ring_group.answered_dial_path", winner.dial_path or "")
        return winner

    async def _parallel(self) -> Channel | None:
        deadline = time.monotonic() + self.timeout
        pending = {asyncio.ensure_future(self._leg(d, deadline)) for d in self.group}
        try:
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                # Every finished leg is looked at, so that none's error goes unretrieved;
                # an answer wins over another leg's error, whose leg is hung up anyway.
                winner: Channel | None = None
                error: BaseException | None = None
                for task in done:
                    if task.exception() is not None:
                        error = error or task.exception()
                    elif winner is None:
                        winner = task.result()
                if winner is not None:
                    return winner
                if error is not None:
                    raise error
            return None
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _one_by_one(self) -> Channel | None:
        remaining = list(self.group)
        while remaining:
            if self.mode is RingMode.BALANCING:
                assert self.balancer is not None
                destination = await self.balancer.acquire(remaining)
                if destination is None:
                    return None
                counted = True
            else:
                destination, counted = remaining[0], False
            remaining.remove(destination)
            leg = await self._leg(destination, time.monotonic() + self.timeout, counted)
            if leg is not None:
                return leg
            # Its turn is over: it must not go on ringing (or be answered) beside the next.
            await self._hangup_losers(None)
        return None

    async def _leg(
        self, destination: str, deadline: float, counted: bool = False
    ) -> Channel | None:
        """Ring one destination until ``deadline``; the answered leg, or None."""
        balancer = self.balancer
        if balancer is not None and not counted:
            await balancer.increment(destination)
        on_end = None
        if balancer is not None:

            def on_end(leg: Channel) -> None:
                _spawn(
                    balancer.decrement(destination),
                    f"ring group leg {leg.uuid} to {destination} ended: decrementing its"
                    " load balancer count",
                )

        try:
            leg = await Channel.create(
                self.protocol,
                destination,
                self.variables,
                timeout=max(0.0, deadline - time.monotonic()),
                on_end=on_end,
            )
        except ChannelError as exc:
            logger.info("ring group leg %s failed: %s", destination, exc.cause)
            return None
        except TimeoutError as exc:  # no ring or answer before the deadline
            logger.info("ring group leg %s: %s", destination, exc)
            return None
        self.legs.append(leg)
        remaining = deadline - time.monotonic()
        if remaining > 0 and not leg.answered:
            with contextlib.suppress(TimeoutError):  # judged just below
                await leg.wait(ChannelState.EXECUTE, timeout=remaining)
        if leg.answered and not leg.is_gone:
            return leg
        return None

    async def _hangup_losers(self, winner: Channel | None) -> None:
        await _hang_up([leg for leg in self.legs if leg is not winner])


async def _hang_up(legs: list[Channel]) -> None:
    """Hang up the ``legs`` still up, ORIGINATOR_CANCEL; a failure is only logged."""
    live = [leg for leg in legs if not leg.is_gone]
    if live:
        results = await asyncio.gather(
            *(leg.hangup("ORIGINATOR_CANCEL") for leg in live), return_exceptions=True
        )
        for leg, result in zip(live, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning("hanging up ring group leg %s failed: %r", leg.uuid, result)
