"""process_event spans: attributes stored as the SDK would store them, context, exact ratio."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import SpanLimits

from genesis import tracing
from genesis.inbound import Inbound
from genesis.protocol.base import Protocol
from genesis.protocol.dispatch import Dispatcher
from genesis.protocol.parser import ESLEvent, HeaderFlattener, Parser
from tests.esl_server import ESLServer, event_frames
from tests.otel_sdk import install_sdk

EVENT_FRAMES = event_frames()


def corpus_events() -> list[ESLEvent]:
    return Parser().feed(b"".join(EVENT_FRAMES))


@pytest.fixture(autouse=True)
def restore_configuration() -> Iterator[None]:
    yield
    tracing.configure(from_environment=True)


def spans_both_ways(monkeypatch: pytest.MonkeyPatch, limits: SpanLimits | None
                    ) -> tuple[list[Any], list[Any], int]:
    """process_event spans of every corpus event, via the engine and via set_attributes."""
    exporter, provider = install_sdk(monkeypatch, limits=limits)
    tracing.configure(event_span_ratio=1.0)
    spans = tracing.event_spans()
    assert spans is not None
    calls = 0
    public = sdk_trace._Span.set_attributes

    def counted(self: Any, attributes: Any) -> None:
        nonlocal calls
        calls += 1
        public(self, attributes)

    monkeypatch.setattr(sdk_trace._Span, "set_attributes", counted)
    batch = tracing.SpanBatch()
    for event in corpus_events():
        spans.dispatch(Dispatcher(), event, event.name, batch)
    engine_calls = calls
    engine = list(exporter.get_finished_spans())
    exporter.clear()
    tracer = provider.get_tracer("reference")
    flattener = HeaderFlattener()
    for event in corpus_events():
        span = tracer.start_span("process_event")
        span.set_attributes(flattener.flatten(event))
        span.end()
    return engine, list(exporter.get_finished_spans()), engine_calls


def test_attributes_equal_what_set_attributes_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, reference, calls = spans_both_ways(monkeypatch, None)
    assert calls == 0  # the default limits leave room: no per-attribute validation
    assert len(engine) == len(reference) == len(EVENT_FRAMES)
    with_lists = 0
    for mine, theirs in zip(engine, reference, strict=True):
        assert dict(mine.attributes) == dict(theirs.attributes)
        assert list(mine.attributes) == list(theirs.attributes)
        assert [type(v) for v in mine.attributes.values()] == [
            type(v) for v in theirs.attributes.values()]
        assert mine.dropped_attributes == theirs.dropped_attributes == 0
        with_lists += any(type(v) is tuple for v in mine.attributes.values())
    assert with_lists > 0  # repeated headers are in the corpus: stored as tuples
    assert {"event.name", "event.uuid", "event.header.event_date_timestamp"} <= set(
        engine[0].attributes)


@pytest.mark.parametrize("limits", [SpanLimits(max_span_attribute_length=8),
                                    SpanLimits(max_span_attributes=10)],
                         ids=["value-length", "attribute-count"])
def test_span_limits_are_left_to_the_sdk(
    monkeypatch: pytest.MonkeyPatch, limits: SpanLimits
) -> None:
    engine, reference, calls = spans_both_ways(monkeypatch, limits)
    assert calls == len(EVENT_FRAMES)
    for mine, theirs in zip(engine, reference, strict=True):
        assert dict(mine.attributes) == dict(theirs.attributes)
        assert mine.dropped_attributes == theirs.dropped_attributes
    if limits.max_span_attribute_length == 8:
        assert all(len(v) <= 8 for s in engine for v in s.attributes.values()
                   if isinstance(v, str))
    else:
        assert all(len(s.attributes) == 10 for s in engine)


def test_another_span_class_gets_set_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    install_sdk(monkeypatch)
    tracing.configure(event_span_ratio=1.0)
    spans = tracing.event_spans()
    assert spans is not None
    received: list[dict[str, Any]] = []

    class Recording(trace.NonRecordingSpan):
        def is_recording(self) -> bool:
            return True

        def set_attributes(self, attributes: Any) -> None:
            received.append(dict(attributes))

    class Tracer:
        def start_span(self, name: str, context: Any = None, links: Any = (),
                       start_time: int | None = None) -> trace.Span:
            return Recording(trace.INVALID_SPAN_CONTEXT)

    monkeypatch.setattr(spans, "_tracer", Tracer())
    (event,) = corpus_events()[:1]
    spans.dispatch(Dispatcher(), event, event.name, tracing.SpanBatch())
    assert received == [HeaderFlattener().flatten(event)]


async def test_handler_spans_are_children_and_context_is_restored(
    monkeypatch: pytest.MonkeyPatch, server: ESLServer
) -> None:
    exporter, provider = install_sdk(monkeypatch)
    tracing.configure(event_span_ratio=0.5)
    tracer = provider.get_tracer("handler")
    outside: list[int] = []

    def handler(event: ESLEvent) -> None:
        current = trace.get_current_span()
        if current.is_recording():
            with tracer.start_as_current_span("handler_work"):
                pass
        else:
            outside.append(current.get_span_context().span_id)

    async with Inbound("127.0.0.1", server.port, "ClueCon", timeout=2) as client:
        client.on("*", handler)
        await client.subscribe("ALL")
        server.broadcast(b"".join(EVENT_FRAMES[:200]))
        await server.wait_for(lambda: len(exporter.get_finished_spans()) >= 200 + 2)
    finished = exporter.get_finished_spans()
    events = {s.context.span_id: s for s in finished if s.name == "process_event"}
    work = [s for s in finished if s.name == "handler_work"]
    assert len(events) == len(work) == 100
    assert all(s.parent is not None and s.parent.span_id in events for s in work)
    # Untraced events run with no current span (never the connection span, never a stale one).
    assert len(outside) == 100 and not set(outside) & set(events)


async def test_ratio_is_exact_across_chunks_and_connections(
    monkeypatch: pytest.MonkeyPatch, server: ESLServer
) -> None:
    exporter, _ = install_sdk(monkeypatch)
    tracing.configure(event_span_ratio=0.3)
    seen = 0

    def count(event: ESLEvent) -> None:
        nonlocal seen
        seen += 1

    def reached(total: int) -> Callable[[], bool]:
        return lambda: seen == total

    for start in (0, 500):
        async with Inbound("127.0.0.1", server.port, "ClueCon", timeout=2) as client:
            client.on("*", count)
            await client.subscribe("ALL")
            for frame in EVENT_FRAMES[start:start + 500]:  # many small chunks
                server.broadcast(frame)
                await asyncio.sleep(0)
            await server.wait_for(reached(start + 500))
    traced = [s for s in exporter.get_finished_spans() if s.name == "process_event"]
    assert len(traced) == 300  # 0.3 of 1000, the count carried over chunks and connections


LOG_LINE = b"Content-Type: log/data\nContent-Length: 6\n\nhello\n"


def traced_positions(messages: list[ESLEvent], cuts: list[int]) -> list[int]:
    """Route ``messages`` through a Protocol in chunks ending at ``cuts``; the traced ones."""
    protocol = Protocol()
    traced: list[int] = []
    position = {id(m): i for i, m in enumerate(messages)}

    def handler(event: ESLEvent) -> None:
        if trace.get_current_span().is_recording():
            traced.append(position[id(event)])

    protocol.on("*", handler)
    start = 0
    for stop in [*cuts, len(messages)]:
        protocol._handle(messages[start:stop])
        start = stop
    return traced


@pytest.mark.parametrize("others", [0.0, 0.1, 0.6])
@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.3, 0.01, 0.0007])
def test_chunks_are_cut_at_the_events_the_ratio_accumulator_picks(
        monkeypatch: pytest.MonkeyPatch, ratio: float, others: float) -> None:
    # The engine takes the ratio once per traced event and cuts each chunk where the
    # traced event is: whatever the chunking and however many non-events (log lines
    # here) lie between them, the traced events must be exactly those where a
    # per-event accumulator reaches a whole unit.
    install_sdk(monkeypatch)
    tracing.configure(event_span_ratio=ratio)
    rng = random.Random(f"{ratio} {others}")
    messages: list[ESLEvent] = []
    events: list[int] = []
    for _ in range(8):
        for event in Parser().feed(b"".join(EVENT_FRAMES)):
            while rng.random() < others:
                messages.append(Parser().feed(LOG_LINE)[0])
            events.append(len(messages))
            messages.append(event)
    assert len(events) > 10_000
    cuts = sorted(rng.sample(range(1, len(messages)), len(messages) // 40))
    step = round(ratio * tracing.SPAN_UNIT)
    unit = tracing.SPAN_UNIT
    expected = [at for i, at in enumerate(events) if (i + 1) * step // unit > i * step // unit]
    assert traced_positions(messages, cuts) == expected


def test_replies_between_events_do_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    install_sdk(monkeypatch)
    tracing.configure(event_span_ratio=0.5)
    e = corpus_events()[:6]
    reply = Parser().feed(b"Content-Type: command/reply\nReply-Text: +OK\n\n")[0]
    # At 0.5 the 2nd, 4th and 6th events are traced, wherever the replies fall.
    messages = [e[0], reply, reply, e[1], reply, e[2], e[3], reply, e[4], e[5]]
    for cuts in ([], [1], [2, 3], [4, 7], list(range(1, 10))):
        assert traced_positions(messages, cuts) == [3, 6, 9]
