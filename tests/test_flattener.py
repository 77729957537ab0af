"""HeaderFlattener and snake_case of both twins (OpenTelemetry attributes)."""

from __future__ import annotations

from types import ModuleType
from typing import Any


def _parsed(twin: ModuleType, lines: bytes) -> Any:
    inner = lines + b"\n"
    (event,) = twin.Parser().feed(
        b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(inner) + inner)
    return event


def test_snake_case(twin: ModuleType) -> None:
    assert twin.snake_case("Event-Subclass") == "event_subclass"
    assert twin.snake_case("Channel-State") == "channel_state"
    assert twin.snake_case("variable_sip_h_X-Foo.Bar") == "variable_sip_h_x_foo_bar"
    assert twin.snake_case("Café 2") == "caf__2"
    assert twin.snake_case("Channel-State") is twin.snake_case("Channel-State")


def test_flatten_in_wire_order(twin: ModuleType) -> None:
    event = _parsed(twin, b"Event-Name: CUSTOM\nEvent-Subclass: a%3A%3Ab\nUnique-ID: u1\n"
                          b"Channel-State: CS_INIT\nL: ARRAY%3A%3Ax%7C%3Ay\n")
    attributes = twin.HeaderFlattener().flatten(event)
    assert list(attributes.items()) == [
        ("event.name", "a::b"), ("event.uuid", "u1"), ("event.header.event_name", "CUSTOM"),
        ("event.header.event_subclass", "a::b"), ("event.header.channel_state", "CS_INIT"),
        ("event.header.l", ["x", "y"])]


def test_allowlist_decodes_only_what_it_keeps(twin: ModuleType) -> None:
    lines = b"".join(b"H-%d: v%%20%d\n" % (i, i) for i in range(100))
    event = _parsed(twin, b"Event-Name: BIG\nUnique-ID: u\n" + lines)
    flattener = twin.HeaderFlattener(allowlist=["H-3", "h_50", "Missing"])
    assert flattener.flatten(event) == {"event.name": "BIG", "event.uuid": "u",
                                        "event.header.h_3": "v 3", "event.header.h_50": "v 50"}
    assert event.decoded == 4


def test_max_attributes_caps_the_total(twin: ModuleType) -> None:
    lines = b"".join(b"H-%d: %d\n" % (i, i) for i in range(300))
    event = _parsed(twin, b"Event-Name: BIG\nUnique-ID: u\n" + lines)
    attributes = twin.HeaderFlattener().flatten(event)
    assert len(attributes) == 128
    assert list(attributes)[:3] == ["event.name", "event.uuid", "event.header.event_name"]
    assert len(twin.HeaderFlattener(max_attributes=5).flatten(event)) == 5
    assert twin.HeaderFlattener(max_attributes=0).flatten(event) == {}


def test_non_event_has_no_name(twin: ModuleType) -> None:
    (reply,) = twin.Parser().feed(b"Content-Type: command/reply\nReply-Text: +OK\n\n")
    assert twin.HeaderFlattener().flatten(reply) == {
        "event.header.content_type": "command/reply", "event.header.reply_text": "+OK"}
