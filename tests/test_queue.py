"""Queue semantics, run over both backends: the in-memory one and a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import genesis
from genesis.exceptions import GenesisError, QueueTimeoutError
from genesis.queue import InMemoryBackend, Queue, QueueBackend, QueueReleasedError, RedisBackend
from tests.polling import until

WAIT = 5.0  # bound for every await that would hang on a bug


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[QueueBackend]:
    if request.param == "memory":
        yield InMemoryBackend()
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    redis_backend = RedisBackend(url, key_prefix=prefix, lease_ttl=3.0, poll_interval=0.02)
    yield redis_backend
    await redis_backend.close()


@pytest.fixture(params=["memory", "redis"])
async def make_backend(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[float], QueueBackend]]:
    """Makes backends with a given lease_ttl (small, so expiry tests sleep little)."""
    made: list[QueueBackend] = []
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")

    def make(lease_ttl: float) -> QueueBackend:
        backend: QueueBackend
        if request.param == "memory":
            backend = InMemoryBackend(lease_ttl=lease_ttl)
        else:
            backend = RedisBackend(url, key_prefix=prefix, lease_ttl=lease_ttl,
                                   poll_interval=lease_ttl / 10)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


def test_public_names() -> None:
    assert genesis.Queue is Queue  # type: ignore[attr-defined]
    assert genesis.RedisBackend is RedisBackend  # type: ignore[attr-defined]
    assert genesis.QueueTimeoutError is QueueTimeoutError  # type: ignore[attr-defined]
    # A GenesisError like every other, importable where its backends are too.
    assert genesis.QueueReleasedError is QueueReleasedError  # type: ignore[attr-defined]
    assert issubclass(QueueReleasedError, GenesisError)


async def test_fifo_order(backend: QueueBackend) -> None:
    queue = Queue(backend)
    order: list[int] = []
    holder = queue.slot("q")
    await asyncio.wait_for(holder.__aenter__(), WAIT)

    async def visitor(n: int) -> None:
        async with queue.slot("q", item_id=f"item-{n}", timeout=WAIT):
            order.append(n)

    tasks = []
    for n in range(6):
        await backend.enqueue("q", f"item-{n}")  # places are taken in this order
    for n in reversed(range(6)):  # start waiting in the opposite order: the place counts
        tasks.append(asyncio.create_task(visitor(n)))
    await until(lambda: _depth_is(backend, "q", 6), WAIT)
    await holder.__aexit__(None, None, None)
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert order == list(range(6))
    assert await backend.depth("q") == 0
    assert await backend.active("q") == 0


async def _depth_is(backend: QueueBackend, queue_id: str, n: int) -> bool:
    return await backend.depth(queue_id) == n


async def _waiting_behind_holder(backend: QueueBackend, item: str) -> asyncio.Task[None]:
    """"holder" takes the one slot of "q"; ``item``'s wait (no timeout) is first in line."""
    await asyncio.wait_for(backend.wait_and_acquire("q", "holder", 1, WAIT), WAIT)
    waiting = asyncio.create_task(backend.wait_and_acquire("q", item, 1, None))
    await until(lambda: _depth_is(backend, "q", 1), WAIT)
    return waiting


async def test_concurrency_limit(backend: QueueBackend) -> None:
    queue = Queue(backend)
    inside = 0
    peak = 0
    done = 0

    async def call() -> None:
        nonlocal inside, peak, done
        async with queue.slot("limited", max_concurrent=3, timeout=WAIT):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1
            done += 1

    await asyncio.wait_for(asyncio.gather(*(call() for _ in range(20))), 2 * WAIT)
    assert done == 20
    assert peak == 3
    assert await backend.active("limited") == 0


async def test_timeout_removes_waiter(backend: QueueBackend) -> None:
    queue = Queue(backend)
    async with queue.slot("busy", timeout=WAIT):
        with pytest.raises(QueueTimeoutError):
            async with queue.slot("busy", timeout=0.1):
                pytest.fail("admitted while the only slot was held")
        assert await backend.depth("busy") == 0
    # The timed-out waiter left no ghost ahead of this one.
    async with queue.slot("busy", timeout=0.5) as slot:
        assert slot.held


async def test_timeout_zero_fails_at_once_when_full(backend: QueueBackend) -> None:
    queue = Queue(backend)
    async with queue.slot("z"):
        with pytest.raises(QueueTimeoutError):
            await asyncio.wait_for(backend.wait_and_acquire("z", "other", 1, 0), WAIT)
    await asyncio.wait_for(backend.wait_and_acquire("z", "other", 1, 0), WAIT)
    await backend.release("z", "other")


async def test_cancelled_waiter_removed(backend: QueueBackend) -> None:
    queue = Queue(backend)
    holder = queue.slot("c")
    await asyncio.wait_for(holder.__aenter__(), WAIT)
    cancelled = asyncio.create_task(backend.wait_and_acquire("c", "cancelled", 1, None))
    await until(lambda: _depth_is(backend, "c", 1), WAIT)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(cancelled, WAIT)
    assert await backend.depth("c") == 0
    later = asyncio.create_task(backend.wait_and_acquire("c", "later", 1, WAIT))
    await holder.__aexit__(None, None, None)
    await asyncio.wait_for(later, WAIT)  # the cancelled waiter did not take the slot
    assert await backend.active("c") == 1
    await backend.release("c", "later")
    assert await backend.active("c") == 0


async def test_cancelled_holder_releases(backend: QueueBackend) -> None:
    queue = Queue(backend)
    entered = asyncio.Event()

    async def hold() -> None:
        async with queue.slot("h"):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(hold())
    await asyncio.wait_for(entered.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    assert await backend.active("h") == 0


async def test_semaphore_shared_by_many_tasks(backend: QueueBackend) -> None:
    queue = Queue(backend)
    sem = queue.semaphore("sem", max_concurrent=2, timeout=WAIT)
    inside = 0
    peak = 0

    async def user(nested: bool) -> None:
        nonlocal inside, peak
        for _ in range(3):
            async with sem:
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0.002)
                inside -= 1
        if nested:  # one task holding two entries at once releases both, in order
            other = queue.semaphore("sem-nested", max_concurrent=2, timeout=WAIT)
            async with other, other:
                assert await backend.active("sem-nested") == 2
            assert await backend.active("sem-nested") == 0

    await asyncio.wait_for(asyncio.gather(*(user(n == 0) for n in range(10))), 4 * WAIT)
    assert peak == 2
    assert await backend.active("sem") == 0
    assert await backend.depth("sem") == 0


async def test_semaphore_explicit_acquire_release(backend: QueueBackend) -> None:
    sem = Queue(backend).semaphore("explicit", max_concurrent=1, timeout=0.1)
    first = await asyncio.wait_for(sem.acquire(), WAIT)
    with pytest.raises(QueueTimeoutError):
        await sem.acquire()
    await sem.release(first)
    second = await asyncio.wait_for(sem.acquire(), WAIT)
    assert second != first
    await sem.release(second)


async def test_depth_counts_waiters_only(backend: QueueBackend) -> None:
    queue = Queue(backend)
    assert await queue.depth("d") == 0
    async with queue.slot("d", max_concurrent=1):
        for n in range(4):
            await backend.enqueue("d", f"w{n}")
        await backend.enqueue("d", "w0")  # enqueueing twice keeps one place
        assert await queue.depth("d") == 4
        assert await backend.active("d") == 1
        await backend.release("d", "w2")  # a waiter that gives up
        assert await queue.depth("d") == 3
    for n in (0, 1, 3):
        await backend.release("d", f"w{n}")
    assert await queue.depth("d") == 0


async def test_release_of_a_waiting_item_ends_its_wait(backend: QueueBackend) -> None:
    """release() of an item whose caller waits takes it out of line for good: the wait
    raises QueueReleasedError, and the slot goes to the next one in line. (In memory the
    wait went on for an item no longer in line, for good without a timeout; Redis put the
    item back at the end of the line and later gave it a slot nobody wanted.)"""
    gone = await _waiting_behind_holder(backend, "gone")
    nxt = asyncio.create_task(backend.wait_and_acquire("q", "next", 1, WAIT))
    await until(lambda: _depth_is(backend, "q", 2), WAIT)
    await backend.release("q", "gone")
    with pytest.raises(QueueReleasedError):
        await asyncio.wait_for(gone, WAIT)
    assert await backend.depth("q") == 1
    await backend.release("q", "holder")
    await asyncio.wait_for(nxt, WAIT)
    assert (await backend.active("q"), await backend.depth("q")) == (1, 0)
    await backend.release("q", "next")


async def test_a_released_wait_frees_its_item_id_for_a_new_wait_at_once(
    backend: QueueBackend,
) -> None:
    """Right after release() of a waiting item returns, a new wait with the same item id
    takes a new place, and the released wait still ends released. (Redis refused the new
    wait as a second caller until the released wait's next poll.)"""
    gone = await _waiting_behind_holder(backend, "x")
    await backend.release("q", "x")
    again = asyncio.create_task(backend.wait_and_acquire("q", "x", 1, WAIT))
    with pytest.raises(QueueReleasedError):
        await asyncio.wait_for(gone, WAIT)
    await until(lambda: _depth_is(backend, "q", 1), WAIT)
    await backend.release("q", "holder")
    await asyncio.wait_for(again, WAIT)
    assert (await backend.active("q"), await backend.depth("q")) == (1, 0)
    await backend.release("q", "x")


async def test_a_place_taken_again_after_a_release_does_not_revive_the_released_wait(
    backend: QueueBackend,
) -> None:
    """enqueue() of an item right after release() took its waiting caller out of line
    takes a new place: the released wait still ends released. (Redis took that place for
    the released wait's, which went on waiting and would have taken the slot.)"""
    gone = await _waiting_behind_holder(backend, "x")
    await backend.release("q", "x")
    await backend.enqueue("q", "x")
    with pytest.raises(QueueReleasedError):
        await asyncio.wait_for(gone, WAIT)
    assert (await backend.active("q"), await backend.depth("q")) == (1, 1)
    await backend.release("q", "x")
    await backend.release("q", "holder")
    assert (await backend.active("q"), await backend.depth("q")) == (0, 0)


async def test_a_wait_started_after_its_place_was_released_waits_normally(
    backend: QueueBackend,
) -> None:
    """A release before the wait starts takes only the place: the wait takes a new one."""
    await asyncio.wait_for(backend.wait_and_acquire("q", "holder", 1, WAIT), WAIT)
    await backend.enqueue("q", "late")
    await backend.release("q", "late")
    late = asyncio.create_task(backend.wait_and_acquire("q", "late", 1, WAIT))
    await until(lambda: _depth_is(backend, "q", 1), WAIT)
    await backend.release("q", "holder")
    await asyncio.wait_for(late, WAIT)
    assert (await backend.active("q"), await backend.depth("q")) == (1, 0)
    await backend.release("q", "late")


async def test_an_enqueued_place_nobody_waits_for_lapses(
    make_backend: Callable[[float], QueueBackend],
) -> None:
    """A place taken with enqueue() by a caller that then crashed or gave up, never
    waiting for it, lapses after lease_ttl instead of blocking the line behind it for good
    (in memory it never lapsed)."""
    backend = make_backend(0.5)
    await asyncio.wait_for(backend.wait_and_acquire("q", "holder", 1, WAIT), WAIT)
    await backend.enqueue("q", "ghost")
    assert await backend.depth("q") == 1
    nxt = asyncio.create_task(backend.wait_and_acquire("q", "next", 1, WAIT))
    await backend.release("q", "holder")
    await asyncio.wait_for(nxt, WAIT)  # once the ghost ahead of it lapsed
    assert (await backend.active("q"), await backend.depth("q")) == (1, 0)
    await backend.release("q", "next")


async def test_enqueueing_again_renews_the_place(
    make_backend: Callable[[float], QueueBackend],
) -> None:
    backend = make_backend(0.6)
    await backend.enqueue("q", "a")
    await asyncio.sleep(0.4)
    await backend.enqueue("q", "a")
    await asyncio.sleep(0.4)  # past the first enqueue's lease_ttl
    assert await backend.depth("q") == 1
    await until(lambda: _depth_is(backend, "q", 0), WAIT)


async def test_a_waiting_caller_keeps_its_place_past_the_lease(
    make_backend: Callable[[float], QueueBackend],
) -> None:
    """Once its caller waits, an enqueued place no longer lapses, however long the wait."""
    backend = make_backend(0.2)
    await asyncio.wait_for(backend.wait_and_acquire("q", "holder", 1, WAIT), WAIT)
    await backend.enqueue("q", "early")
    early = asyncio.create_task(backend.wait_and_acquire("q", "early", 1, WAIT))
    await asyncio.sleep(0.6)
    await backend.enqueue("q", "late")
    assert await backend.depth("q") == 2
    await backend.release("q", "holder")
    await asyncio.wait_for(early, WAIT)
    await backend.release("q", "early")
    await backend.release("q", "late")


async def test_slot_is_single_use(backend: QueueBackend) -> None:
    slot = Queue(backend).slot("once")
    async with slot:
        pass
    with pytest.raises(RuntimeError):
        async with slot:
            pass


async def test_an_item_id_serves_one_caller_at_a_time(backend: QueueBackend) -> None:
    """A wait with an item id that holds a slot, or that another caller waits with, fails
    at once and leaves that caller's slot or place alone: two callers sharing an id would
    share one slot, and the first release would end both holds."""
    await asyncio.wait_for(backend.wait_and_acquire("q", "holder", 1, WAIT), WAIT)
    with pytest.raises(ValueError, match="already holds a slot"):
        await asyncio.wait_for(backend.wait_and_acquire("q", "holder", 1, WAIT), WAIT)
    waiter = asyncio.create_task(backend.wait_and_acquire("q", "w", 1, WAIT))
    await until(lambda: _depth_is(backend, "q", 1), WAIT)
    with pytest.raises(ValueError, match="already waiting"):
        await asyncio.wait_for(backend.wait_and_acquire("q", "w", 1, WAIT), WAIT)
    assert (await backend.active("q"), await backend.depth("q")) == (1, 1)
    await backend.release("q", "holder")
    await asyncio.wait_for(waiter, WAIT)
    assert (await backend.active("q"), await backend.depth("q")) == (1, 0)
    await backend.release("q", "w")
    assert await backend.active("q") == 0


def test_invalid_arguments() -> None:
    queue = Queue()
    with pytest.raises(ValueError):
        queue.slot("x", max_concurrent=0)
    with pytest.raises(ValueError):
        queue.semaphore("x", timeout=-1)
    with pytest.raises(ValueError):
        RedisBackend(lease_ttl=1.0, poll_interval=0.5, client=_NoRedis())
    with pytest.raises(ValueError):
        InMemoryBackend(lease_ttl=0)


class _NoRedis:
    """Stands in for a client: construction must fail before any script is registered."""

    def register_script(self, script: str) -> object:
        raise AssertionError("validation should have failed first")


def test_import_genesis_queue_does_not_import_redis() -> None:
    import subprocess
    import sys

    code = "import genesis.queue, genesis.group, sys; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"


async def test_waiter_cancelled_as_its_slot_is_granted_ends_cancelled() -> None:
    """A cancel landing in the instant a waiter with a timeout is granted its slot wins:
    the task ends cancelled and the slot goes back. (asyncio.wait_for on 3.10 and 3.11
    returned the grant and dropped the cancel: the task went on, holding the slot.)"""
    backend = InMemoryBackend()
    queue = Queue(backend)
    await backend.wait_and_acquire("q", "holder", 1, None)
    entered = asyncio.Event()

    async def waiter() -> None:
        async with queue.slot("q", timeout=WAIT):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(waiter())
    await until(lambda: _depth_is(backend, "q", 1), WAIT)
    await backend.release("q", "holder")  # grants the waiter's slot...
    task.cancel()  # ...and the cancel arrives before the waiter runs again
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    assert not entered.is_set()
    assert (await backend.active("q"), await backend.depth("q")) == (0, 0)


class _CountingLine(dict[str, Any]):
    """A waiting line that counts the entries admission walks through."""

    walked = 0

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        for pair in super().items():
            self.walked += 1
            yield pair


async def test_admission_walks_only_the_head_of_the_line() -> None:
    """A new waiter or a freed slot looks only as far into the line as a slot can reach.
    Each used to walk the whole line: quadratic CPU time for a long queue (8,000 waiters
    took 13 s of CPU), with the event loop blocked meanwhile."""
    backend = InMemoryBackend()
    await backend.wait_and_acquire("q", "holder", 2, None)
    waiters = [
        asyncio.create_task(backend.wait_and_acquire("q", f"w{n}", 2, None)) for n in range(200)
    ]
    await until(lambda: _depth_is(backend, "q", 199), WAIT)  # w0 took the second slot
    line = backend._lines["q"]
    line.waiting = counting = _CountingLine(line.waiting)
    late = asyncio.create_task(backend.wait_and_acquire("q", "late", 2, None))
    await until(lambda: _depth_is(backend, "q", 200), WAIT)
    await backend.release("q", "holder")
    assert (await backend.active("q"), next(iter(line.waiting))) == (2, "w2")
    assert counting.walked <= 2  # the line is 200 long
    for task in [*waiters, late]:
        task.cancel()
    await asyncio.gather(*waiters, late, return_exceptions=True)
    assert await backend.depth("q") == 0
