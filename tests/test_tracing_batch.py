"""process_event spans handed to the SDK in batches: when, with which times, and laziness."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genesis import tracing
from genesis._event_span import EventSpan
from genesis.inbound import Inbound
from genesis.protocol.dispatch import Dispatcher
from genesis.protocol.parser import ESLEvent, Parser
from tests.esl_server import ESLServer, event_frames
from tests.otel_sdk import install_sdk

EVENT_FRAMES = event_frames()


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exp, _ = install_sdk(monkeypatch)
    # Only a full batch, a lost connection or flush() hand spans over in these tests.
    monkeypatch.setattr(tracing, "BATCH_DELAY", 60.0)
    tracing.configure(event_span_ratio=1.0)
    yield exp
    tracing.flush()
    tracing.configure(from_environment=True)


def event_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == "process_event"]


async def test_spans_wait_for_a_full_batch_and_keep_their_times(
    exporter: InMemorySpanExporter, server: ESLServer
) -> None:
    ran: list[tuple[str | None, int]] = []

    def handler(event: ESLEvent) -> None:
        ran.append((event.get("Event-Sequence"), time.time_ns()))

    async with Inbound("127.0.0.1", server.port, "ClueCon", timeout=2) as client:
        client.on("*", handler)
        await client.subscribe("ALL")
        server.broadcast(b"".join(EVENT_FRAMES[:tracing.BATCH_SIZE - 1]))
        await server.wait_for(lambda: len(ran) == tracing.BATCH_SIZE - 1)
        await asyncio.sleep(0.05)
        assert event_spans(exporter) == []  # dispatched, recorded, not yet handed over
        server.broadcast(EVENT_FRAMES[tracing.BATCH_SIZE - 1])
        await server.wait_for(lambda: len(ran) == tracing.BATCH_SIZE)
        spans = event_spans(exporter)  # the batch filled: all of them, at once
        assert len(spans) == tracing.BATCH_SIZE
    # In event order, each span around its handler's run, with the times it really had.
    assert [s.attributes["event.header.event_sequence"] for s in spans  # type: ignore[index]
            ] == [sequence for sequence, _ in ran]
    for span, (_, when) in zip(spans, ran, strict=True):
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time <= when <= span.end_time


async def test_a_lost_connection_and_flush_hand_spans_over(
    exporter: InMemorySpanExporter, server: ESLServer
) -> None:
    seen: list[ESLEvent] = []
    async with Inbound("127.0.0.1", server.port, "ClueCon", timeout=2) as client:
        client.on("*", seen.append)
        await client.subscribe("ALL")
        server.broadcast(b"".join(EVENT_FRAMES[:3]))
        await server.wait_for(lambda: len(seen) == 3)
        assert event_spans(exporter) == []
        tracing.flush()
        assert len(event_spans(exporter)) == 3
        server.broadcast(b"".join(EVENT_FRAMES[3:5]))
        await server.wait_for(lambda: len(seen) == 5)
        assert len(event_spans(exporter)) == 3
    assert len(event_spans(exporter)) == 5  # stop() closed the connection: flushed


async def test_a_quiet_connection_hands_spans_over_after_the_delay(
    exporter: InMemorySpanExporter, server: ESLServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "BATCH_DELAY", 0.1)
    handled: list[float] = []
    async with Inbound("127.0.0.1", server.port, "ClueCon", timeout=2) as client:
        client.on("*", lambda event: handled.append(time.monotonic()))
        await client.subscribe("ALL")
        for count in (2, 3):  # a second batch arms the timer again
            server.broadcast(b"".join(EVENT_FRAMES[:count]))
            await server.wait_for(lambda n=count: len(event_spans(exporter)) == n, timeout=2)
            waited = time.monotonic() - handled[-count]
            assert 0.08 <= waited < 1.5
            exporter.clear()


async def test_a_handler_that_needs_the_span_starts_it_at_once(
    exporter: InMemorySpanExporter, server: ESLServer
) -> None:
    tracer = trace.get_tracer_provider().get_tracer("handler")
    contexts: list[trace.SpanContext] = []

    def plain(event: ESLEvent) -> None:
        assert trace.get_current_span().is_recording()  # without starting the SDK span

    def child(event: ESLEvent) -> None:
        with tracer.start_as_current_span("handler_work"):
            contexts.append(trace.get_current_span().get_span_context())

    async def in_thread(event: ESLEvent) -> None:
        def work() -> None:
            with tracer.start_as_current_span("thread_work"):
                pass

        await asyncio.to_thread(work)

    seen: list[ESLEvent] = []
    async with Inbound("127.0.0.1", server.port, "ClueCon", timeout=2) as client:
        client.on("*", seen.append)
        client.on("CHANNEL_CREATE", plain)
        client.on("CHANNEL_CREATE", child)
        client.on("CHANNEL_ANSWER", in_thread)
        await client.subscribe("ALL")
        server.broadcast(b"".join(EVENT_FRAMES))
        await server.wait_for(lambda: len(seen) == len(EVENT_FRAMES) and sum(
            s.name == "thread_work" for s in exporter.get_finished_spans()) == 40)
    finished = exporter.get_finished_spans()
    events = {s.context.span_id: s for s in finished if s.name == "process_event"}
    assert len(events) == len(EVENT_FRAMES)
    for name in ("handler_work", "thread_work"):
        work = [s for s in finished if s.name == name]
        assert len(work) == 40  # the corpus has 40 of each
        for span in work:
            assert span.parent is not None
            parent = events[span.parent.span_id]
            assert parent.context.trace_id == span.context.trace_id
            assert parent.start_time is not None and span.start_time is not None
            assert parent.start_time <= span.start_time
    assert len(contexts) == 40


def test_an_event_span_starts_its_sdk_span_once(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = tracing.event_spans()
    assert spans is not None
    (event,) = Parser().feed(EVENT_FRAMES[0])
    starts: list[Any] = []
    begin = tracing.EventSpans.begin

    def counted(self: tracing.EventSpans, *args: Any) -> trace.Span:
        starts.append(args)
        time.sleep(0.01)  # let the other threads pile up on the same span
        return begin(self, *args)

    monkeypatch.setattr(tracing.EventSpans, "begin", counted)
    span = EventSpan(spans, event, (), time.time_ns())
    assert span.is_recording() and starts == []
    contexts = []
    barrier = threading.Barrier(4)

    def ask() -> None:
        barrier.wait()
        contexts.append(span.get_span_context())

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(starts) == 1 and len({c.span_id for c in contexts}) == 1
    span.end_time = time.time_ns()
    span.complete()
    span.complete()  # already ended: not again
    (finished,) = event_spans(exporter)
    assert finished.end_time == span.end_time


def test_no_running_loop_hands_over_at_once(exporter: InMemorySpanExporter) -> None:
    spans = tracing.event_spans()
    assert spans is not None
    (event,) = Parser().feed(EVENT_FRAMES[0])
    spans.dispatch(Dispatcher(), event, event.name, tracing.SpanBatch())
    assert len(event_spans(exporter)) == 1


async def test_a_batch_is_started_then_attributed_then_ended_in_passes(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each pass over a batch runs one kind of code; an SDK span reaches its EventSpan
    (and so any other thread) only once its attributes are in."""
    from opentelemetry.sdk.trace import SpanProcessor

    seen: list[tuple[str, int]] = []

    class Order(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            seen.append(("start", len(span.attributes or {})))

        def on_end(self, span: ReadableSpan) -> None:
            seen.append(("end", len(span.attributes or {})))

    trace.get_tracer_provider().add_span_processor(Order())  # type: ignore[attr-defined]
    spans = tracing.event_spans()
    assert spans is not None
    batch = tracing.SpanBatch()
    handed: list[tuple[bool, int]] = []
    pending: list[EventSpan] = []
    attribute = tracing.EventSpans.attribute

    def watched(self: tracing.EventSpans, real: trace.Span, event: ESLEvent) -> None:
        attribute(self, real, event)
        # Not yet handed to its EventSpan: no other thread can reach it unattributed.
        attributes = real.attributes  # type: ignore[attr-defined]
        handed.append((any(s._real is real for s in pending), len(attributes)))

    monkeypatch.setattr(tracing.EventSpans, "attribute", watched)
    events = [e for f in EVENT_FRAMES[:5] for e in Parser().feed(f)]
    for event in events:
        spans.dispatch(Dispatcher(), event, event.name, batch)
    pending.extend(batch._pending)
    assert len(pending) == 5
    batch.flush()
    assert [kind for kind, _ in seen] == ["start"] * 5 + ["end"] * 5
    assert all(count == 0 for kind, count in seen if kind == "start")
    ended = [count for kind, count in seen if kind == "end"]
    assert all(count > 10 for count in ended)
    assert [(False, count) for count in ended] == handed
    assert all(span._real is not None for span in pending)
    assert len(event_spans(exporter)) == 5


async def test_spans_are_made_ahead_after_a_flush_and_used_once_each(
    exporter: InMemorySpanExporter, server: ESLServer
) -> None:
    """After a flush, the next events' spans and contexts were made in advance: each event
    still gets its own span, with its own context and its real start time."""
    from opentelemetry import context as otel_context

    ran: list[tuple[Any, Any, int]] = []

    def handler(event: ESLEvent) -> None:
        ran.append((trace.get_current_span(), otel_context.get_current(), time.time_ns()))

    size = tracing.BATCH_SIZE
    async with Inbound("127.0.0.1", server.port, "ClueCon", timeout=2) as client:
        client.on("*", handler)
        await client.subscribe("ALL")
        batch = client._span_batch
        assert batch.ready == []
        server.broadcast(b"".join(EVENT_FRAMES[:size]))
        await server.wait_for(lambda: len(ran) == size)
        made = [span for span, _ in batch.ready]
        assert len(made) == size  # as many as the flush completed
        server.broadcast(b"".join(EVENT_FRAMES[size:2 * size]))
        await server.wait_for(lambda: len(ran) == 2 * size)
        # Taken from the end of the list, one per event.
        assert [span for span, _, _ in ran[size:]] == made[::-1]
        # A new EventSpans (the configuration changed) never uses spans made by the old one.
        tracing.configure(event_span_ratio=1.0)
        assert len(batch.ready) == size
        server.broadcast(EVENT_FRAMES[0])
        await server.wait_for(lambda: len(ran) == 2 * size + 1)
        assert ran[-1][0]._spans is tracing.event_spans()
        assert all(ran[-1][0] is not span for span, _ in batch.ready)
    assert batch.ready == []  # the connection is gone: nothing is made for it any more
    assert len({id(span) for span, _, _ in ran}) == len(ran)
    assert len({id(context) for _, context, _ in ran}) == len(ran)
    spans = event_spans(exporter)
    assert len(spans) == len(ran)
    for span, (_, _, when) in zip(spans, ran, strict=True):
        assert span.start_time is not None and span.end_time is not None
        # Started when its event was dispatched, not when it was made.
        assert when - 10**9 < span.start_time <= when <= span.end_time


async def test_a_new_connection_span_drops_the_spans_made_ahead(
    exporter: InMemorySpanExporter, server: ESLServer
) -> None:
    tracing.configure(event_span_ratio=1.0, event_span_links=True)
    ran: list[ESLEvent] = []
    size = tracing.BATCH_SIZE
    async with Inbound("127.0.0.1", server.port, "ClueCon", timeout=2) as client:
        client.on("*", ran.append)
        await client.subscribe("ALL")
        server.broadcast(b"".join(EVENT_FRAMES[:size]))
        await server.wait_for(lambda: len(ran) == size)
        assert len(client._span_batch.ready) == size
        other = trace.get_tracer_provider().get_tracer("test").start_span("reconnected")
        client.trace_connection(other)
        assert client._span_batch.ready == []
        server.broadcast(EVENT_FRAMES[0])
        await server.wait_for(lambda: len(ran) == size + 1)
    last = event_spans(exporter)[-1]
    assert [link.context for link in last.links] == [other.get_span_context()]


async def test_flushes_from_another_thread_lose_and_repeat_no_span(
    exporter: InMemorySpanExporter, server: ESLServer
) -> None:
    """The loop adds spans without a lock while another thread keeps flushing: every
    traced event still gets exactly one process_event span."""
    stop = threading.Event()

    def flush_all_the_time() -> None:
        while not stop.is_set():
            tracing.flush()

    flusher = threading.Thread(target=flush_all_the_time)
    seen: list[str] = []
    async with Inbound("127.0.0.1", server.port, "ClueCon", timeout=2) as client:
        client.on("*", lambda ev: seen.append(ev["Event-Sequence"]))
        await client.subscribe("ALL")
        flusher.start()
        try:
            for _ in range(5):
                server.broadcast(b"".join(EVENT_FRAMES))
                await asyncio.sleep(0)
            await server.wait_for(lambda: len(seen) == 5 * len(EVENT_FRAMES), timeout=30)
        finally:
            stop.set()
            await asyncio.to_thread(flusher.join)
    tracing.flush()
    spans = event_spans(exporter)
    assert len(spans) == len(seen)
    assert len({s.context.span_id for s in spans}) == len(seen)


def test_a_batch_leaves_the_flush_registry_with_its_connection() -> None:
    before = len(tracing._State.batches)
    batch = tracing.SpanBatch()
    assert len(tracing._State.batches) == before + 1
    del batch
    assert len(tracing._State.batches) == before
