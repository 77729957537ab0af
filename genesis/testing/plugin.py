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

import importlib.util
from collections.abc import AsyncIterator

import pytest

from genesis.testing.server import FreeSwitchSimulator

# The entry point loads this module in every pytest run of an environment that has
# Genesis installed, so a missing pytest-asyncio must not break unrelated suites: the
# fixture then fails only when a test asks for it, saying why.
if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def freeswitch() -> AsyncIterator[FreeSwitchSimulator]:
        """A running FreeSWITCH simulator on 127.0.0.1 (random port, password ClueCon)."""
        async with FreeSwitchSimulator(host="127.0.0.1", port=0, password="ClueCon") as fs:
            yield fs

else:

    @pytest.fixture
    def freeswitch() -> FreeSwitchSimulator:
        """Unavailable: the simulator fixture is async and needs pytest-asyncio."""
        pytest.fail("the freeswitch fixture needs pytest-asyncio (pip install pytest-asyncio)")
