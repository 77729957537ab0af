"""Fixtures shared by the whole suite: the real-traffic corpus and the two parser twins."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus" / "freeswitch-1.10.12"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """Directory of the real FreeSWITCH 1.10.12 captures (read-only, never copied)."""
    if not CORPUS.is_dir():
        pytest.fail(f"corpus not found at {CORPUS}: the repository expects ../shared beside it")
    return CORPUS


def _load_twin(name: str) -> ModuleType:
    if name == "python":
        return importlib.import_module("genesis._parser_py")
    if os.environ.get("GENESIS_NO_EXTENSIONS") == "1":
        pytest.skip("GENESIS_NO_EXTENSIONS=1: the compiled twin is disabled on purpose")
    try:
        return importlib.import_module("genesis._parser")
    except ImportError as exc:  # test_compiled_loaded fails loudly for this case
        pytest.skip(f"compiled parser not built: {exc}")


@pytest.fixture(params=["compiled", "python"])
def twin(request: pytest.FixtureRequest) -> ModuleType:
    """The parser module under test: the Cython extension or its pure-Python twin."""
    return _load_twin(request.param)
