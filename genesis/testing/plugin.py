"""pytest plugin: the ``freeswitch`` fixture.

Installed with Genesis (a ``pytest11`` entry point), so any test suite can write::

    async def test_dialer(freeswitch):
        freeswitch.endpoint("user/1001", answer_after=0.1)
        async with Inbound(*freeswitch.address, freeswitch.password) as client:
            reply = await client.send("api originate user/1001 &park()")
            assert reply.body.startswith("+OK")

The fixture is a running :class:`~genesis.testing.FreeSwitchSimulator` on 127.0.0.1 with
a free port (``freeswitch.host``, ``freeswitch.port``, ``freeswitch.address``) and the
password ``ClueCon``; it is stopped, every call torn down, when the test ends. It is
function-scoped and async, so it needs pytest-asyncio (``asyncio_mode = "auto"`` or
``@pytest.mark.asyncio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from genesis.testing.server import FreeSwitchSimulator


@pytest_asyncio.fixture
async def freeswitch() -> AsyncIterator[FreeSwitchSimulator]:
    """A running FreeSWITCH simulator on 127.0.0.1 (random port, password ClueCon)."""
    async with FreeSwitchSimulator(host="127.0.0.1", port=0, password="ClueCon") as fs:
        yield fs
