"""A normal install must run the compiled parser, not silently fall back to Python."""

from __future__ import annotations

import importlib
import os

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
