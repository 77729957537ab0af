"""The Event Socket protocol layer.

``genesis.protocol.parser`` is the sans-I/O core; ``Protocol`` (the base of Inbound and
Session) is resolved lazily so that importing the parser never loads the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Protocol"]


def __getattr__(name: str) -> Any:
    if name == "Protocol":
        value = importlib.import_module("genesis.protocol.base").Protocol
        globals()[name] = value
        return value
    raise AttributeError(f"module 'genesis.protocol' has no attribute {name!r}")


if TYPE_CHECKING:
    from genesis.protocol.base import Protocol
