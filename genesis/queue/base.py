"""The queue front end (:class:`Queue`, :class:`QueueSlot`, :class:`QueueSemaphore`) and
the interface every backend implements (:class:`QueueBackend`).

A queue is a FIFO of waiting items plus a set of active items. An item is admitted
when it is among the first ``max_concurrent - active`` waiters, so arrival order is
kept while the limit allows several holders at once. Every way out of a wait
(admission, timeout, cancellation, :meth:`QueueBackend.release` of the waiting item)
leaves the backend consistent: a waiter that gives up is removed, and a slot granted
to a waiter that was cancelled at the same instant is released rather than leaked.
"""

from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod
from types import TracebackType


def _check_limits(max_concurrent: int, timeout: float | None) -> None:
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or >= 0, got {timeout}")


def already_holds(queue_id: str, item_id: str) -> ValueError:
    """The error for a wait by an item that holds a slot: one item id, one caller."""
    return ValueError(f"item {item_id!r} already holds a slot of queue {queue_id!r}")


def already_waiting(queue_id: str, item_id: str) -> ValueError:
    """The error for a second wait by an item whose first wait is still going on."""
    return ValueError(f"item {item_id!r} is already waiting in queue {queue_id!r}")


class QueueBackend(ABC):
    """Storage and admission for queues; the in-memory and Redis backends implement it.

    An item id stands for one caller: waiting with an item that holds a slot, or that
    another caller is still waiting with, raises ValueError at once. Two callers sharing
    an id would share one slot, and the first release would end both holds.
    """

    @abstractmethod
    async def enqueue(self, queue_id: str, item_id: str) -> None:
        """Append ``item_id`` to the waiting line of ``queue_id``.

        The place lapses after the backend's ``lease_ttl`` unless a wait for the item
        starts first: a caller that crashed between the two must not block the line for
        good. Enqueueing an item already in line keeps its place and restarts that time.
        """

    @abstractmethod
    async def wait_and_acquire(
        self,
        queue_id: str,
        item_id: str,
        max_concurrent: int = 1,
        timeout: float | None = None,
    ) -> None:
        """Wait until ``item_id`` is admitted, then hold its slot until :meth:`release`.

        The item is enqueued first if it is not waiting yet. On timeout the item leaves
        the line and :class:`~genesis.exceptions.QueueTimeoutError` is raised; on
        cancellation it leaves the line too.
        """

    @abstractmethod
    async def release(self, queue_id: str, item_id: str) -> None:
        """Free the slot held by ``item_id``, or take it out of the line if it is waiting.

        An item taken out of line stays out: a wait going on for it raises
        :class:`QueueReleasedError` (with Redis, once its process next asks, within
        ``poll_interval``). A wait started afterwards with the same item id takes a new
        place at the back of the line.
        """

    @abstractmethod
    async def depth(self, queue_id: str) -> int:
        """Number of items waiting (not counting the ones holding a slot)."""

    @abstractmethod
    async def active(self, queue_id: str) -> int:
        """Number of items currently holding a slot."""

    async def close(self) -> None:  # noqa: B027 - backends without resources need nothing
        """Release whatever connections the backend holds."""


class QueueSlot:
    """One admission: ``async with queue.slot(...)`` waits its turn and releases on exit.

    A slot is single-use; entering it a second time raises RuntimeError because its
    item id has already been consumed.
    """

    __slots__ = (
        "_backend",
        "_entered",
        "_held",
        "item_id",
        "max_concurrent",
        "queue_id",
        "timeout",
    )

    def __init__(
        self,
        backend: QueueBackend,
        queue_id: str,
        item_id: str | None = None,
        max_concurrent: int = 1,
        timeout: float | None = None,
    ) -> None:
        _check_limits(max_concurrent, timeout)
        self._backend = backend
        self.queue_id = queue_id
        self.item_id = item_id if item_id is not None else uuid.uuid4().hex
        self.max_concurrent = max_concurrent
        self.timeout = timeout
        self._entered = False
        self._held = False

    @property
    def held(self) -> bool:
        """True between admission and release."""
        return self._held

    async def __aenter__(self) -> QueueSlot:
        if self._entered:
            raise RuntimeError(f"queue slot {self.item_id!r} was already used")
        self._entered = True
        await self._backend.wait_and_acquire(
            self.queue_id, self.item_id, self.max_concurrent, self.timeout
        )
        self._held = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._held = False
        # Shielded: a cancelled holder must still give its slot back.
        await asyncio.shield(self._backend.release(self.queue_id, self.item_id))


class QueueSemaphore:
    """A reusable limiter over one queue: ``async with sem:`` from any number of tasks.

    Each entry gets its own item id, remembered per task (a stack, so nested entries
    from one task work), which is why concurrent users never release each other's slots.
    """

    __slots__ = ("_backend", "_held", "max_concurrent", "queue_id", "timeout")

    def __init__(
        self,
        backend: QueueBackend,
        queue_id: str,
        max_concurrent: int = 1,
        timeout: float | None = None,
    ) -> None:
        _check_limits(max_concurrent, timeout)
        self._backend = backend
        self.queue_id = queue_id
        self.max_concurrent = max_concurrent
        self.timeout = timeout
        self._held: dict[asyncio.Task[object], list[str]] = {}

    async def acquire(self) -> str:
        """Wait for a slot and return the item id to pass to :meth:`release`."""
        item_id = uuid.uuid4().hex
        await self._backend.wait_and_acquire(
            self.queue_id, item_id, self.max_concurrent, self.timeout
        )
        return item_id

    async def release(self, item_id: str) -> None:
        """Give back the slot acquired as ``item_id``."""
        await self._backend.release(self.queue_id, item_id)

    async def __aenter__(self) -> QueueSemaphore:
        item_id = await self.acquire()
        task = asyncio.current_task()
        assert task is not None  # async with always runs inside a task
        self._held.setdefault(task, []).append(item_id)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        stack = self._held[task]
        item_id = stack.pop()
        if not stack:
            del self._held[task]
        await asyncio.shield(self.release(item_id))


class Queue:
    """Entry point: ``Queue()`` (in memory) or ``Queue(RedisBackend(url))`` (shared)."""

    __slots__ = ("backend",)

    def __init__(self, backend: QueueBackend | None = None) -> None:
        if backend is None:
            from genesis.queue.memory import InMemoryBackend

            backend = InMemoryBackend()
        self.backend = backend

    def slot(
        self,
        queue_id: str,
        *,
        item_id: str | None = None,
        max_concurrent: int = 1,
        timeout: float | None = None,
    ) -> QueueSlot:
        """A single-use admission to ``queue_id``, for ``async with``."""
        return QueueSlot(self.backend, queue_id, item_id, max_concurrent, timeout)

    def semaphore(
        self, queue_id: str, max_concurrent: int = 1, timeout: float | None = None
    ) -> QueueSemaphore:
        """A reusable limiter on ``queue_id``, safe to share between tasks."""
        return QueueSemaphore(self.backend, queue_id, max_concurrent, timeout)

    async def depth(self, queue_id: str) -> int:
        """Number of items waiting in ``queue_id``."""
        return await self.backend.depth(queue_id)

    async def close(self) -> None:
        """Close the backend's connections."""
        await self.backend.close()
