"""The public surface of the package: names, cheap import, parser selection."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import genesis

CONTRACT_NAMES = [
    "Inbound", "Consumer", "filtrate", "Outbound", "Session", "ESLEvent", "Channel",
    "RingGroup", "RingMode", "InMemoryLoadBalancer", "RedisLoadBalancer", "Queue",
    "QueueBackend", "QueueSemaphore", "QueueSlot", "QueueTimeoutError", "InMemoryBackend",
    "RedisBackend", "use_uvloop", "__version__",
]


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_contract_name_is_importable(name: str) -> None:
    assert getattr(genesis, name) is not None
    assert name in dir(genesis)


def test_all_lists_exactly_the_lazy_exports() -> None:
    # __all__ is spelled out for static tools; the lazy-import table is what resolves the
    # names: a name added to one and not the other would be unexported or unresolvable.
    assert set(genesis.__all__) == {*genesis._EXPORTS, "__version__", "parser_implementation"}


def test_other_contract_modules_import() -> None:
    from genesis.exceptions import CommandStage, ConnectionLost, GenesisError
    from genesis.group import LoadBalancerBackend
    from genesis.protocol import Protocol
    from genesis.protocol.parser import ESLEvent, parse_headers
    from genesis.queue import RedisBackend
    from genesis.types import ChannelState, ContextType, EventHandler, HangupCause

    assert issubclass(ConnectionLost, GenesisError)
    assert CommandStage.NOT_SENT and LoadBalancerBackend and Protocol and RedisBackend
    assert ChannelState.from_freeswitch("CS_EXECUTE") is ChannelState.EXECUTE
    assert ChannelState.from_freeswitch("CS_BOGUS") is ChannelState.NONE
    assert ChannelState.known("cs_execute") is ChannelState.EXECUTE
    assert ChannelState.known("CS_NONE") is ChannelState.NONE
    assert ChannelState.known("CS_BOGUS") is None and ChannelState.known("") is None
    assert ContextType and EventHandler and HangupCause
    event = parse_headers("Event-Name: HEARTBEAT\nUp-Time: 0%20years")
    assert isinstance(event, ESLEvent) and event["Up-Time"] == "0 years"


def _modules_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    probe = f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
        env={**os.environ, **(env or {})},
    )
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_import_genesis_is_cheap() -> None:
    loaded = _modules_after("import genesis")
    heavy = [m for m in loaded if m.split(".")[0] in {"redis", "uvloop", "opentelemetry"}]
    assert heavy == []
    assert "genesis.inbound" not in loaded and "genesis.testing" not in loaded
    assert "asyncio" not in loaded


def test_parser_only_import_stays_light() -> None:
    loaded = _modules_after("import genesis.protocol.parser")
    assert "genesis.protocol.base" not in loaded
    if sys.version_info >= (3, 11):  # before, exceptions need asyncio's TimeoutError
        assert "asyncio" not in loaded


def test_no_extensions_forces_the_python_twin() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import genesis; print(genesis.parser_implementation())"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "GENESIS_NO_EXTENSIONS": "1"},
    )
    assert out.stdout.strip() == "python"
