"""The Redis client shared by the Redis-backed load balancer and queue backend.

redis-py is an optional dependency: it is imported here, on first use of a Redis class,
never by ``import genesis``.
"""

from __future__ import annotations

from typing import Any


def connect(url: str, max_connections: int) -> Any:
    """An asyncio Redis client on a *blocking* pool: a burst of calls waits for a free
    connection instead of failing with "Too many connections"."""
    import redis.asyncio

    return redis.asyncio.Redis.from_pool(
        redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=max_connections)
    )
