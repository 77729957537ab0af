"""The header flattener on one routed event, with the CPU caches warm and evicted.

At a 1% span ratio a traced event comes once per hundred parsed ones, and its
attributes are read in a batch long after it was routed: the flattener then finds the
event's bytes, the parser's name and value caches, its own key table and the key and
value strings cold. ``evicted`` rewrites a buffer larger than the last-level cache
before each round (untimed), so the round shows that cost; ``warm`` flattens event
after event as a 100%-traced connection would.

Run: ``.venv/bin/python -m pytest bench/test_flatten_bench.py --benchmark-only``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# More than this machine's shared L3 (32 MiB): every line the flattener needs is evicted.
EVICT = 48 << 20


def _twin(name: str) -> ModuleType:
    if name == "python":
        return importlib.import_module("genesis._parser_py")
    if os.environ.get("GENESIS_NO_EXTENSIONS") == "1":
        pytest.skip("GENESIS_NO_EXTENSIONS=1: the compiled twin is disabled on purpose")
    return importlib.import_module("genesis._parser")


def _event_frames(corpus: Path) -> list[bytes]:
    """The text/event-plain frames of plain.bin, whole."""
    data = (corpus / "plain.bin").read_bytes()
    frames = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n\n", pos)
        head = data[pos:end]
        length = 0
        for line in head.split(b"\n"):
            if line.startswith(b"Content-Length: "):
                length = int(line[16:])
        stop = end + 2 + length
        if b"Content-Type: text/event-plain" in head:
            frames.append(data[pos:stop])
        pos = stop
    return frames


@pytest.mark.parametrize("caches", ["warm", "evicted"])
@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_flatten(benchmark: Any, corpus: Path, impl: str, caches: str) -> None:
    twin = _twin(impl)
    frames = _event_frames(corpus)
    flattener = twin.HeaderFlattener(None)
    junk = bytearray(EVICT)
    zeros = bytes(len(junk[::64]))
    count = [0]

    def routed() -> Any:
        """A fresh event of the capture, routed as the engine routes it."""
        (event,) = twin.Parser().feed(frames[count[0] % len(frames)])
        count[0] += 7
        assert event.name is not None
        event.get("Unique-ID")
        return event

    # A running process has met these names and values before.
    for _ in frames:
        flattener.flatten(routed())

    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        event = routed()
        if caches == "evicted":
            junk[::64] = zeros
        return (event,), {}

    benchmark.group = f"flatten, caches {caches}"
    attrs = benchmark.pedantic(flattener.flatten, setup=setup,
                               rounds=300 if impl == "compiled" else 100, iterations=1)
    assert attrs["event.name"] and len(attrs) > 10
