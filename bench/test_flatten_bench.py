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

from typing import Any

import pytest
from capture import event_frames, parser_twin

# More than this machine's shared L3 (32 MiB): every line the flattener needs is evicted.
EVICT = 48 << 20


@pytest.mark.parametrize("caches", ["warm", "evicted"])
@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_flatten(benchmark: Any, impl: str, caches: str) -> None:
    parser = parser_twin(impl)
    frames = event_frames()
    flattener = parser.HeaderFlattener(None)
    junk = bytearray(EVICT)
    zeros = bytes(len(junk[::64]))
    count = [0]

    def routed() -> Any:
        """A fresh event of the capture, routed as the engine routes it."""
        (event,) = parser.Parser().feed(frames[count[0] % len(frames)])
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
