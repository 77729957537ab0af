"""Fixtures shared by the whole suite: the real-traffic corpus and the two parser twins."""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.esl_server import ESLServer

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


@pytest.fixture
async def server() -> AsyncIterator[ESLServer]:
    """A minimal ESL server on a free port (a module may override it, e.g. with a password)."""
    srv = ESLServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real redis-server started for this test session (see tests/redis_server.py)."""
    from tests.redis_server import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to one test, so tests sharing the server never see each other."""
    import uuid

    return f"genesis-test:{uuid.uuid4().hex}:"
