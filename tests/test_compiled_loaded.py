"""A normal install must run the compiled parser, not silently fall back to Python."""

from __future__ import annotations

import gc
import importlib
import os
from pathlib import Path

import pytest

import genesis

pytestmark = pytest.mark.skipif(
    os.environ.get("GENESIS_NO_EXTENSIONS") == "1",
    reason="GENESIS_NO_EXTENSIONS=1: the pure-Python parser is forced on purpose",
)


def test_compiled_parser_is_importable() -> None:
    module = importlib.import_module("genesis._parser")
    assert module.__file__ is not None and not module.__file__.endswith(".py")


def test_compiled_parser_is_the_one_in_use() -> None:
    assert genesis.parser_implementation() == "compiled"
    from genesis.protocol import parser

    assert parser.Parser is importlib.import_module("genesis._parser").Parser


def test_compiled_events_are_not_tracked_by_the_cyclic_gc(corpus: Path) -> None:
    """Events are made at firehose rate: tracking them costs a third of the throughput."""
    from genesis import _parser

    messages = _parser.Parser().feed((corpus / "plain.bin").read_bytes()[:200_000])
    assert messages and not any(gc.is_tracked(m) for m in messages)
    event = next(m for m in messages if m.kind == _parser.KIND_EVENT)
    event["X-Added"] = "value"  # still a plain mapping of strings after a mutation
    assert not gc.is_tracked(event) and event["X-Added"] == "value"
