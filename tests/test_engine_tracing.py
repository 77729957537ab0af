"""Spans over real TCP: names, attributes, laziness, ratio, allowlist, no password anywhere."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from genesis import tracing
from genesis.inbound import Inbound
from genesis.outbound import Outbound, Session
from tests.esl_server import ESLServer, FakeCall, event_frames
from tests.otel_sdk import install_sdk

PASSWORD = "S3cret-Pa55"


def events_block() -> bytes:
    return b"".join(event_frames())


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exp, _ = install_sdk(monkeypatch)
    tracing.configure(event_span_ratio=1.0, event_span_headers=())
    yield exp
    tracing.configure(from_environment=True)


@pytest.fixture
async def server() -> AsyncIterator[ESLServer]:
    srv = ESLServer(password=PASSWORD)
    await srv.start()
    yield srv
    await srv.stop()


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    assert span.attributes is not None
    return span.attributes


def dump(exp: InMemorySpanExporter) -> str:
    return json.dumps([json.loads(s.to_json()) for s in exp.get_finished_spans()])


async def test_connect_command_and_event_spans(
    exporter: InMemorySpanExporter, server: ESLServer
) -> None:
    seen: list[str] = []
    async with Inbound("127.0.0.1", server.port, PASSWORD, timeout=2) as client:
        client.on("*", lambda ev: seen.append(ev.name or ""))
        assert await client.api("echo traced", timeout=2) == "traced"
        await client.subscribe("ALL")
        server.broadcast(events_block())
        await server.wait_for(lambda: len(seen) == 1347)
    spans = exporter.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    connect = by_name["inbound_connect"][0]
    assert connect.attributes["net.peer.name"] == "127.0.0.1"
    assert connect.attributes["net.peer.port"] == server.port
    commands = {s.attributes["command.name"]: s.attributes for s in by_name["send_command"]}
    assert commands["auth"]["command.reply"] == "+OK accepted"
    assert commands["api"]["command.reply"] == "traced"
    assert commands["event"]["command.reply"] == "+OK event listener enabled plain"
    # auth runs inside inbound_connect
    auth_span = next(s for s in by_name["send_command"] if s.attributes["command.name"] == "auth")
    assert auth_span.parent is not None and auth_span.parent.span_id == connect.context.span_id
    events = by_name["process_event"]
    assert len(events) == 1347
    dtmf = next(s for s in events if s.attributes["event.name"] == "DTMF")
    assert dtmf.attributes["event.header.dtmf_digit"] in "1234#"
    assert "event.uuid" in dtmf.attributes
    assert all(len(s.attributes) <= 128 for s in events)
    assert PASSWORD not in dump(exporter)


async def test_allowlist_and_ratio(exporter: InMemorySpanExporter, server: ESLServer) -> None:
    tracing.configure(event_span_ratio=0.01, event_span_headers=["Channel-State", "DTMF-Digit"])
    seen: list[str] = []
    async with Inbound("127.0.0.1", server.port, PASSWORD, timeout=2) as client:
        client.on("*", lambda ev: seen.append(ev.name or ""))
        await client.subscribe("ALL")
        server.broadcast(events_block())
        await server.wait_for(lambda: len(seen) == 1347)
    events = [s for s in exporter.get_finished_spans() if s.name == "process_event"]
    assert len(events) == 13  # exactly 1% of 1347, evenly spaced
    for span in events:
        headers = {k for k in attrs(span) if k.startswith("event.header.")}
        assert headers <= {"event.header.channel_state", "event.header.dtmf_digit"}


async def test_ratio_zero_and_environment(
    exporter: InMemorySpanExporter, server: ESLServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENESIS_EVENT_SPAN_RATIO", "0")
    monkeypatch.setenv("GENESIS_EVENT_SPAN_HEADERS", "Unique-ID, Channel-State")
    tracing.configure(from_environment=True)
    assert tracing.event_span_ratio() == 0.0
    assert tracing.event_spans() is None
    monkeypatch.setenv("GENESIS_EVENT_SPAN_RATIO", "0.5")
    tracing.configure(from_environment=True)
    seen: list[str] = []
    async with Inbound("127.0.0.1", server.port, PASSWORD, timeout=2) as client:
        client.on("*", lambda ev: seen.append(ev.name or ""))
        await client.subscribe("ALL")
        server.broadcast(b"".join(event_frames()[:40]))
        await server.wait_for(lambda: len(seen) == 40)
    events = [s for s in exporter.get_finished_spans() if s.name == "process_event"]
    assert len(events) == 20
    # The allowlist came from the environment too (Unique-ID is event.uuid, not a header).
    assert {k for s in events for k in attrs(s) if k.startswith("event.header.")} <= {
        "event.header.channel_state"}


async def test_unsampled_spans_build_no_attributes(
    monkeypatch: pytest.MonkeyPatch, server: ESLServer
) -> None:
    exp, _ = install_sdk(monkeypatch, sampler=ALWAYS_OFF)
    tracing.configure(event_span_ratio=1.0)
    flattened: list[object] = []

    class Spy:
        def flatten(self, event: object) -> dict[str, str]:
            flattened.append(event)
            return {}

    monkeypatch.setattr(tracing._State, "flattener", Spy())
    seen: list[str] = []
    try:
        async with Inbound("127.0.0.1", server.port, PASSWORD, timeout=2) as client:
            client.on("*", lambda ev: seen.append(ev.name or ""))
            await client.subscribe("ALL")
            server.broadcast(events_block())
            await server.wait_for(lambda: len(seen) == 1347)
    finally:
        tracing.configure(from_environment=True)
    assert flattened == []
    assert exp.get_finished_spans() == ()


def test_importing_the_engine_does_not_import_opentelemetry() -> None:
    # Tracing costs nothing until an SDK is installed, start-up included.
    code = ("import sys, genesis.inbound, genesis.consumer, genesis.outbound; "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_no_sdk_provider_means_no_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    assert tracing.tracer() is None
    assert tracing.event_spans() is None
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.NoOpTracerProvider())
    assert tracing.event_spans() is None


async def test_outbound_span_has_real_peer(exporter: InMemorySpanExporter) -> None:
    tracing.configure(event_span_links=True)

    async def handler(session: Session) -> None:
        await session.sendmsg("execute", "answer", block=True, timeout=2)

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    port = server.addresses[0][1]
    loop = asyncio.get_running_loop()
    transport, fake = await loop.create_connection(FakeCall, "127.0.0.1", port)
    local_port = transport.get_extra_info("sockname")[1]
    await asyncio.wait_for(fake.closed, 5)
    await server.stop()
    span = next(s for s in exporter.get_finished_spans() if s.name == "outbound_handle_connection")
    assert attrs(span)["net.peer.name"] == "127.0.0.1"
    assert attrs(span)["net.peer.port"] == local_port
    events = [s for s in exporter.get_finished_spans() if s.name == "process_event"]
    assert {attrs(s)["event.name"] for s in events} >= {
        "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE"}
    for event in events:
        assert event.parent is None and event.context.trace_id != span.context.trace_id
        assert [link.context for link in event.links] == [span.context]
    names = [attrs(s).get("command.name") for s in exporter.get_finished_spans()
             if s.name == "send_command"]
    assert names[:4] == ["connect", "filter", "event", "linger"] and "sendmsg" in names


async def test_event_spans_are_roots_linked_to_the_connection(
    exporter: InMemorySpanExporter, server: ESLServer
) -> None:
    tracing.configure(event_span_ratio=0.5, event_span_headers=(), event_span_links=True)
    tracer = trace.get_tracer_provider().get_tracer("user")
    untraced: list[trace.SpanContext] = []

    def handler(event: Any) -> None:
        current = trace.get_current_span()
        if current.is_recording():
            with tracer.start_as_current_span("handler_work"):
                pass
        else:
            untraced.append(current.get_span_context())
            with tracer.start_as_current_span("untraced_work"):
                pass

    async with Inbound("127.0.0.1", server.port, PASSWORD, timeout=2) as client:
        client.on("*", handler)
        await client.subscribe("ALL")
        server.broadcast(events_block())
        await server.wait_for(lambda: len(untraced) == 674)
    spans = exporter.get_finished_spans()
    connect = next(s for s in spans if s.name == "inbound_connect")
    events = [s for s in spans if s.name == "process_event"]
    assert len(events) == 673
    # One trace per event: a week-long connection must not make one endless trace.
    assert all(s.parent is None for s in events)
    assert len({s.context.trace_id for s in events} | {connect.context.trace_id}) == 674
    for span in events:
        (link,) = span.links
        assert link.context == connect.context
    by_id = {s.context.span_id: s for s in events}
    work = [s for s in spans if s.name == "handler_work"]
    assert len(work) == 673
    assert all(s.parent is not None and s.parent.span_id in by_id
               and s.context.trace_id == by_id[s.parent.span_id].context.trace_id for s in work)
    # Untraced events run with no current span: their handlers' spans are roots too,
    # never children of the connection span.
    assert not any(ctx.is_valid for ctx in untraced)
    assert all(s.parent is None for s in spans if s.name == "untraced_work")


async def test_commands_sent_by_handlers_belong_to_their_event(
    exporter: InMemorySpanExporter, server: ESLServer
) -> None:
    tracing.configure(event_span_ratio=0.5, event_span_headers=())
    current: list[trace.SpanContext] = []
    done: list[int] = []

    async with Inbound("127.0.0.1", server.port, PASSWORD, timeout=2,
                       max_concurrency=4) as client:

        async def send(index: int) -> None:
            await client.api(f"echo event-{index}", timeout=2)
            done.append(index)

        def handler(event: Any) -> Any:
            # The coroutine runs later on one of 4 workers, each serving many events.
            current.append(trace.get_current_span().get_span_context())
            return send(len(current) - 1)

        def from_task(event: Any) -> None:
            index = len(current) - 1  # called right after handler, for the same event
            task = asyncio.get_running_loop().create_task(
                client.api(f"echo task-{index}", timeout=2))
            tasks.append(task)

        tasks: list[asyncio.Task[str]] = []
        client.on("CHANNEL_STATE", handler)
        client.on("CHANNEL_STATE", from_task)
        await client.subscribe("ALL")
        server.broadcast(events_block())
        await server.wait_for(lambda: len(current) > 0 and len(done) == len(current))
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(current) > 40
    commands = {attrs(s)["command.reply"]: s for s in exporter.get_finished_spans()
                if s.name == "send_command" and attrs(s)["command.name"] == "api"}
    traced = 0
    for index, parent in enumerate(current):
        for reply in (f"event-{index}", f"task-{index}"):
            span = commands[reply]
            if parent.is_valid:
                assert span.parent is not None and span.parent.span_id == parent.span_id
                assert span.context.trace_id == parent.trace_id
                traced += 1
            else:
                assert span.parent is None, reply
    assert 0 < traced < 2 * len(current)


@pytest.mark.parametrize("setting", [None, "0", "1"])
async def test_event_span_links_are_opt_in(
    exporter: InMemorySpanExporter, server: ESLServer, monkeypatch: pytest.MonkeyPatch,
    setting: str | None,
) -> None:
    if setting is None:
        monkeypatch.delenv("GENESIS_EVENT_SPAN_LINKS", raising=False)
    else:
        monkeypatch.setenv("GENESIS_EVENT_SPAN_LINKS", setting)
    tracing.configure(from_environment=True)
    tracing.configure(event_span_ratio=1.0)
    async with Inbound("127.0.0.1", server.port, PASSWORD, timeout=2) as client:
        seen: list[str] = []
        client.on("*", lambda event: seen.append(event.name))
        await client.subscribe("ALL")
        server.broadcast(b"".join(event_frames()[:5]))
        await server.wait_for(lambda: len(seen) == 5)
    tracing.flush()
    spans = exporter.get_finished_spans()
    connect = next(s for s in spans if s.name == "inbound_connect")
    events = [s for s in spans if s.name == "process_event"]
    assert len(events) == 5
    expected = [connect.context] if setting == "1" else []
    assert all([link.context for link in s.links] == expected for s in events)


def test_a_knob_set_in_code_keeps_the_other_knobs_environment() -> None:
    code = ("from genesis import tracing\n"
            "tracing.configure(event_span_ratio=0.25)\n"
            "s = tracing._State\n"
            "print(s.ratio, s.headers, s.links)")
    env = {"GENESIS_EVENT_SPAN_RATIO": "0.5", "GENESIS_EVENT_SPAN_HEADERS": "Unique-ID",
           "GENESIS_EVENT_SPAN_LINKS": "yes", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["0.25", "('Unique-ID',)", "True"]
