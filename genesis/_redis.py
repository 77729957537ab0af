"""The Redis client shared by the Redis-backed load balancer and queue backend.

redis-py is an optional dependency: it is imported here, on first use of a Redis class,
never by ``import genesis``.
"""

from __future__ import annotations

from typing import Any

# Seconds a connect, or a reply, may take before the call fails with redis-py's
# TimeoutError. redis-py before 8 waits forever by default, so a stalled or partitioned
# server hung every call, and every wait with a timeout, for good. A URL query
# (``?socket_timeout=…&socket_connect_timeout=…``) overrides them.
SOCKET_TIMEOUT = 5.0
SOCKET_CONNECT_TIMEOUT = 5.0


def connect(url: str, max_connections: int) -> Any:
    """An asyncio Redis client on a *blocking* pool: a burst of calls waits for a free
    connection instead of failing with "Too many connections"."""
    import redis.asyncio

    return redis.asyncio.Redis.from_pool(
        redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_CONNECT_TIMEOUT,
        )
    )
