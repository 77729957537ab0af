"""Genesis: a fast, correct asyncio library for FreeSWITCH's Event Socket.

``import genesis`` is cheap: every public name is imported on first use, so a
program that only needs the parser never loads asyncio servers, Redis clients
or the OpenTelemetry SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "2026.11.25"

# Public name -> module that defines it. Resolved by __getattr__ on first use.
_EXPORTS: dict[str, str] = {
    "Inbound": "genesis.inbound",
    "Consumer": "genesis.consumer",
    "filtrate": "genesis.consumer",
    "Outbound": "genesis.outbound",
    "Session": "genesis.outbound",
    "ESLEvent": "genesis.protocol.parser",
    "Channel": "genesis.channel",
    "RingGroup": "genesis.group",
    "RingMode": "genesis.group",
    "InMemoryLoadBalancer": "genesis.group",
    "RedisLoadBalancer": "genesis.group",
    "Queue": "genesis.queue",
    "QueueBackend": "genesis.queue",
    "QueueSemaphore": "genesis.queue",
    "QueueSlot": "genesis.queue",
    "QueueTimeoutError": "genesis.exceptions",
    "QueueReleasedError": "genesis.exceptions",
    "InMemoryBackend": "genesis.queue",
    "RedisBackend": "genesis.queue",
    "use_uvloop": "genesis.loop",
}

__all__ = [
    "Channel",
    "Consumer",
    "ESLEvent",
    "InMemoryBackend",
    "InMemoryLoadBalancer",
    "Inbound",
    "Outbound",
    "Queue",
    "QueueBackend",
    "QueueReleasedError",
    "QueueSemaphore",
    "QueueSlot",
    "QueueTimeoutError",
    "RedisBackend",
    "RedisLoadBalancer",
    "RingGroup",
    "RingMode",
    "Session",
    "__version__",
    "filtrate",
    "parser_implementation",
    "use_uvloop",
]


def parser_implementation() -> str:
    """Return ``"compiled"`` when the Cython parser is active, else ``"python"``."""
    from genesis.protocol.parser import IMPLEMENTATION

    return IMPLEMENTATION


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'genesis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from genesis.channel import Channel
    from genesis.consumer import Consumer, filtrate
    from genesis.exceptions import QueueReleasedError, QueueTimeoutError
    from genesis.group import InMemoryLoadBalancer, RedisLoadBalancer, RingGroup, RingMode
    from genesis.inbound import Inbound
    from genesis.loop import use_uvloop
    from genesis.outbound import Outbound, Session
    from genesis.protocol.parser import ESLEvent
    from genesis.queue import (
        InMemoryBackend,
        Queue,
        QueueBackend,
        QueueSemaphore,
        QueueSlot,
        RedisBackend,
    )
