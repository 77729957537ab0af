"""A plain event with a header line lacking ':' reaches the engine over real TCP.

The parser finds such a line on the first read that indexes the event's lines, not in
feed() (docs/architecture.md, "Decisions the twins share"). When that read is a
handler's, it is an ordinary handler error and the connection goes on; when it is the
engine's own (here: matching a BACKGROUND_JOB by Job-UUID), the connection closes loudly
as for any bad frame. Either way no reply is lost or handed to the wrong command.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

import pytest
from opentelemetry.trace import StatusCode

from genesis import tracing
from genesis.exceptions import ConnectionLost, ProtocolError
from genesis.inbound import Inbound
from genesis.protocol.parser import ESLEvent
from tests.esl_server import Connection, ESLServer, api_response, corpus_event, reply
from tests.otel_sdk import install_sdk

BAD_LINE = b"no colon here"


def with_bad_line(frame: bytes) -> bytes:
    """``frame`` (a plain event) with a header line lacking ':' before its Core-UUID."""
    head, _, inner = frame.partition(b"\n\n")
    spoiled = inner.replace(b"\nCore-UUID: ", b"\n" + BAD_LINE + b"\nCore-UUID: ", 1)
    assert spoiled != inner
    head = re.sub(rb"(?m)^Content-Length: \d+$", b"Content-Length: %d" % len(spoiled), head)
    return head + b"\n\n" + spoiled


def emit_bad_event(output: str) -> Callable[[Connection, str], bool]:
    """A command hook answering ``api emit`` with a malformed CHANNEL_ANSWER, then ``output``.

    The bad event and the api reply arrive in one read, the reply after it.
    """
    answer = with_bad_line(corpus_event("CHANNEL_ANSWER"))

    def emit(conn: Connection, text: str) -> bool:
        if text.startswith("api emit"):
            conn.write(answer + api_response(output))
            return True
        return False

    return emit


async def test_handler_read_raises_and_replies_stay_matched(
        server: ESLServer, caplog: pytest.LogCaptureFixture) -> None:
    server.on_command = emit_bad_event("emitted")
    seen: list[str | None] = []
    errors: list[ProtocolError] = []

    def on_answer(event: ESLEvent) -> None:
        # Routing names are read without the line index: they still work.
        seen.append(event.get("Unique-ID"))
        try:
            event["Caller-Caller-ID-Number"]
        except ProtocolError as exc:
            errors.append(exc)
        event["Channel-State"]  # raises again: the dispatcher logs it

    caplog.set_level(logging.ERROR)
    async with Inbound("127.0.0.1", server.port, "ClueCon", timeout=2) as client:
        client.on("CHANNEL_ANSWER", on_answer)
        first = await client.send("api emit", timeout=5)
        second = await client.send("api echo after", timeout=5)
        assert (first.body, second.body) == ("emitted", "after")
        assert client.is_connected
    assert len(seen) == 1 and seen[0] and len(errors) == 1
    assert "without ':'" in errors[0].reason and errors[0].excerpt == BAD_LINE
    failures = [r for r in caplog.records if "event handler" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], ProtocolError)
    assert not [r for r in caplog.records if "closing the connection" in r.getMessage()]


async def test_engine_read_closes_loudly_and_fails_pending(
        server: ESLServer, caplog: pytest.LogCaptureFixture) -> None:
    job_frame = corpus_event("BACKGROUND_JOB")

    held: list[bytes] = []

    def bgapi(conn: Connection, text: str) -> bool:
        if text.startswith("bgapi "):
            # Answered only once the next command is pending, so that one is in flight.
            job = re.search(r"(?m)^Job-UUID: (.*)$", text)
            assert job is not None
            held.append(job.group(1).encode())
            return True
        if text.startswith("api echo later"):
            uuid = held[0]
            frame = re.sub(rb"(?m)^Job-UUID: .*$", b"Job-UUID: " + uuid, job_frame, count=1)
            # The bgapi reply, the bad event, then the pending command's reply: one read.
            conn.write(reply(f"+OK Job-UUID: {uuid.decode()}", f"Job-UUID: {uuid.decode()}\n")
                       + with_bad_line(frame) + api_response("later"))
            return True
        return False

    server.on_command = bgapi
    caplog.set_level(logging.ERROR)
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    await client.start()
    try:
        job = asyncio.ensure_future(client.bgapi("status", timeout=5))
        await server.wait_for(lambda: bool(held))
        later = asyncio.ensure_future(client.send("api echo later", timeout=5))
        done, _ = await asyncio.wait([job, later], timeout=5)
        assert len(done) == 2
        # Matching the job by its Job-UUID is the engine's read that finds the bad line:
        # the connection closes as if feed() had refused the event, and the reply after
        # it goes with the frames feed() would not have parsed; its command fails loudly.
        assert isinstance(job.exception(), ConnectionLost)
        lost = later.exception()
        assert isinstance(lost, ConnectionLost) and "protocol error" in str(lost)
        assert "without ':'" in str(lost)
        closing = [r for r in caplog.records if "closing the connection" in r.getMessage()]
        assert len(closing) == 1 and "without ':'" in closing[0].getMessage()
    finally:
        await asyncio.wait_for(client.stop(), 5)


async def test_tracing_does_not_change_what_a_malformed_event_does(
        server: ESLServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # With every event traced, the span's attributes read every header, but only when
    # the span is handed to the SDK, after the engine routed the event: the connection
    # behaves as it does untraced (handlers get the event, the next reply arrives),
    # and the span records the malformed line instead of the headers.
    exporter, _ = install_sdk(monkeypatch)
    tracing.configure(event_span_ratio=1.0, event_span_headers=None)
    server.on_command = emit_bad_event("after the bad event")
    handled: list[ESLEvent] = []
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    try:
        await client.start()
        client.on("*", handled.append)
        reply = await client.send("api emit", timeout=5)
        assert reply.body == "after the bad event"
        assert client.is_connected
        tracing.flush()
    finally:
        await asyncio.wait_for(client.stop(), 5)
        tracing.configure(from_environment=True)
    assert [e.name for e in handled] == ["CHANNEL_ANSWER"]
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "process_event"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is not None and "without ':'" in span.status.description
    assert not any(key.startswith("event.header.") for key in span.attributes or {})
