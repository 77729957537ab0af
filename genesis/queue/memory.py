"""The in-process queue backend: one event loop, no I/O, admission in the same callback
that frees a slot (so a released slot goes to the next waiter without a scheduling gap)."""

from __future__ import annotations

import asyncio
from collections import Counter
from itertools import islice

from genesis.exceptions import QueueReleasedError, QueueTimeoutError
from genesis.queue.base import QueueBackend, already_holds, already_waiting


class _Waiter:
    __slots__ = ("expiry", "future", "max_concurrent")

    def __init__(self) -> None:
        # Set once the item's caller waits; its result is True when the item is admitted,
        # False when release() takes it out of line first.
        self.future: asyncio.Future[bool] | None = None
        self.max_concurrent = 1
        # Pending while the item only holds a place taken by enqueue(): the place lapses
        # as an unrenewed heartbeat does in Redis.
        self.expiry: asyncio.TimerHandle | None = None

    def stop_expiry(self) -> None:
        """Cancel the lapse of an enqueue()d place: a wait started, it left, or it is renewed."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None


class _Line:
    __slots__ = ("active", "limits", "waiting")

    def __init__(self) -> None:
        # dict keeps insertion order: the FIFO. A waiter without a future was enqueued
        # but has not started waiting; it keeps its place until its expiry, and cannot
        # be admitted yet.
        self.waiting: dict[str, _Waiter] = {}
        self.active: set[str] = set()
        # The max_concurrent of every waiter with a future: the largest says how far into
        # the line an admission can reach, so admitting never walks the whole line.
        self.limits: Counter[int] = Counter()

    def start_waiting(self, waiter: _Waiter, future: asyncio.Future[bool], limit: int) -> None:
        waiter.stop_expiry()
        waiter.future = future
        waiter.max_concurrent = limit
        self.limits[limit] += 1

    def leave(self, item_id: str) -> _Waiter | None:
        """Take ``item_id`` out of the waiting line, if it is there."""
        waiter = self.waiting.pop(item_id, None)
        if waiter is None:
            return None
        waiter.stop_expiry()
        if waiter.future is not None:
            self.limits[waiter.max_concurrent] -= 1
            if not self.limits[waiter.max_concurrent]:
                del self.limits[waiter.max_concurrent]
        return waiter


class InMemoryBackend(QueueBackend):
    """Queues living in this process; safe for any number of tasks on one event loop.

    The rules match :class:`~genesis.queue.RedisBackend`'s, with this process standing
    for every process there:

    - A place taken with :meth:`enqueue` lapses ``lease_ttl`` seconds later (enqueueing
      the item again restarts that time) unless a wait for the item starts first, so a
      caller that enqueued and then crashed or gave up does not block the line behind it.
    - A waiting caller keeps its place, and a holder its slot, until it leaves: both live
      in this process, so neither can outlive it.
    - :meth:`release` of a waiting item takes it out of line for good; a wait going on for
      it raises :class:`~genesis.queue.QueueReleasedError` at once.
    """

    __slots__ = ("_lines", "lease_ttl")

    def __init__(self, *, lease_ttl: float = 15.0) -> None:
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be positive, got {lease_ttl}")
        self.lease_ttl = lease_ttl
        self._lines: dict[str, _Line] = {}

    async def enqueue(self, queue_id: str, item_id: str) -> None:
        line = self._lines.setdefault(queue_id, _Line())
        if item_id in line.active:
            return
        waiter = line.waiting.get(item_id)
        if waiter is None:
            waiter = line.waiting[item_id] = _Waiter()
        elif waiter.future is not None:
            return
        waiter.stop_expiry()
        waiter.expiry = asyncio.get_running_loop().call_later(
            self.lease_ttl, self._forget, queue_id, item_id
        )

    async def wait_and_acquire(
        self,
        queue_id: str,
        item_id: str,
        max_concurrent: int = 1,
        timeout: float | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        line = self._lines.setdefault(queue_id, _Line())
        if item_id in line.active:
            raise already_holds(queue_id, item_id)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiter = line.waiting.get(item_id)
        if waiter is None:
            waiter = line.waiting[item_id] = _Waiter()
        elif waiter.future is not None:
            raise already_waiting(queue_id, item_id)
        line.start_waiting(waiter, future, max_concurrent)
        self._admit(line)
        # asyncio.wait, not wait_for: on 3.10 and 3.11 wait_for returns the result of a
        # future granted in the same instant as a cancellation and drops the cancellation,
        # so the cancelled task would go on holding the slot.
        try:
            await asyncio.wait((future,), timeout=timeout)
        except BaseException:
            # Covers a slot granted in the same instant as the cancellation: _forget
            # releases it, so it is never leaked.
            self._forget(queue_id, item_id)
            raise
        if not future.done():
            self._forget(queue_id, item_id)
            raise QueueTimeoutError(f"no slot of queue {queue_id!r} within {timeout} s")
        if not future.result():
            raise QueueReleasedError(f"item {item_id!r} was released from queue {queue_id!r}")

    async def release(self, queue_id: str, item_id: str) -> None:
        self._forget(queue_id, item_id)

    async def depth(self, queue_id: str) -> int:
        line = self._lines.get(queue_id)
        return len(line.waiting) if line is not None else 0

    async def active(self, queue_id: str) -> int:
        line = self._lines.get(queue_id)
        return len(line.active) if line is not None else 0

    def _forget(self, queue_id: str, item_id: str) -> None:
        line = self._lines.get(queue_id)
        if line is None:
            return
        line.active.discard(item_id)
        waiter = line.leave(item_id)
        if waiter is not None and waiter.future is not None:
            # Its wait would otherwise go on for an item no longer in line: only a timeout
            # could end it, and without one nothing would.
            waiter.future.set_result(False)
        self._admit(line)
        if not line.waiting and not line.active:
            del self._lines[queue_id]

    @staticmethod
    def _admit(line: _Line) -> None:
        # The waiter at ``position`` is admitted when it is among the first
        # ``max_concurrent - active`` of the line. Admitting one ahead of it moves it up
        # one place and takes one more slot, which leaves that test unchanged: one pass
        # over the line as it stands, judged against the active count before the pass,
        # admits everyone the freed slots allow. No waiter past the widest limit can pass.
        taken = len(line.active)
        reach = max(max(line.limits, default=0) - taken, 0)
        for position, (item_id, waiter) in enumerate(list(islice(line.waiting.items(), reach))):
            if waiter.future is not None and position < waiter.max_concurrent - taken:
                line.leave(item_id)
                line.active.add(item_id)
                waiter.future.set_result(True)
