"""Call queues: FIFO admission with a concurrency limit, in memory or shared through Redis.

A dialer uses a queue to hold calls until an agent (or a trunk channel) is free:
``async with queue.slot("support", max_concurrent=5):`` waits its turn, in arrival
order, until fewer than five holders are inside. The Redis backend lets several
processes share one queue; the ``redis`` package is imported only when a
:class:`RedisBackend` is created, so ``import genesis.queue`` stays cheap.
"""

from __future__ import annotations

from genesis.exceptions import QueueReleasedError, QueueTimeoutError
from genesis.queue.base import Queue, QueueBackend, QueueSemaphore, QueueSlot
from genesis.queue.memory import InMemoryBackend
from genesis.queue.redis_backend import RedisBackend

__all__ = [
    "InMemoryBackend",
    "Queue",
    "QueueBackend",
    "QueueReleasedError",
    "QueueSemaphore",
    "QueueSlot",
    "QueueTimeoutError",
    "RedisBackend",
]
