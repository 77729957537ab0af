"""Fixtures for the benches: the real-traffic corpus, read from ../shared beside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest
from capture import CORPUS


@pytest.fixture(scope="session")
def corpus() -> Path:
    """Directory of the real FreeSWITCH 1.10.12 captures (read-only, never copied)."""
    if not CORPUS.is_dir():
        pytest.fail(f"corpus not found at {CORPUS}: the repository expects ../shared beside it")
    return CORPUS
