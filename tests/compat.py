"""What the tests use from asyncio that Python 3.10, which Genesis supports, lacks."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # the same context manager, from aio-libs, before asyncio had it
    from async_timeout import timeout

__all__ = ["timeout"]
