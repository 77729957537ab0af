"""One event's dispatch to a handler, plain and inside a process_event span, cold.

At a 1% span ratio a traced event comes once per hundred, so what its dispatch adds
(an EventSpan, its context made current and reset, the batch) runs with code and data
the untraced events in between have evicted. Each round rewrites a buffer larger than
the last-level cache first (untimed setup). The traced case uses the spans a batch made
ahead, as a connection does after its first flush; its batch never reaches the SDK
(the span count stays below a full batch and the delay is never reached).

Run: ``.venv/bin/python -m pytest bench/test_dispatch_bench.py --benchmark-only``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from capture import event_frames, parser_twin

from genesis import tracing
from genesis.protocol.dispatch import Dispatcher

# More than this machine's shared L3 (32 MiB).
EVICT = 48 << 20


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    provider = TracerProvider()
    provider.add_span_processor(SpanProcessor())
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(tracing, "BATCH_DELAY", 3600.0)
    tracing.configure(event_span_ratio=0.01)
    yield
    tracing.configure(from_environment=True)


@pytest.mark.parametrize("traced", [False, True], ids=["plain", "traced"])
def test_dispatch_evicted(benchmark: Any, sdk: None, traced: bool) -> None:
    parser = parser_twin("compiled")
    frames = event_frames()
    junk = bytearray(EVICT)
    zeros = bytes(len(junk[::64]))
    dispatcher = Dispatcher()
    dispatcher.on("*", lambda event: (event.get("Event-Name"), event.get("Unique-ID")))
    spans = tracing.event_spans()
    assert spans is not None
    batch = tracing.SpanBatch()
    count = [0]

    tokens: list[object] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        (event,) = parser.Parser().feed(frames[count[0] % len(frames)])
        count[0] += 1
        if not batch.ready:
            spans.prepare(batch, tracing.BATCH_SIZE - 1)
        batch._pending.clear()
        junk[::64] = zeros
        # The chunk's context switch is per chunk, not per traced event: outside the timing.
        tokens.append(spans.enter(dispatcher))
        return (event, event.name), {}

    def teardown(event: Any, name: str) -> None:
        spans.leave(dispatcher, tokens.pop())

    def plain(event: Any, name: str) -> None:
        dispatcher.dispatch(event, name)

    def in_span(event: Any, name: str) -> None:
        spans.dispatch(dispatcher, event, name, batch)

    async def run() -> None:  # the batch arms its timer on the running loop
        benchmark.group = "dispatch, caches evicted"
        benchmark.pedantic(in_span if traced else plain, setup=setup, teardown=teardown,
                           rounds=300, iterations=1)

    asyncio.run(run())
