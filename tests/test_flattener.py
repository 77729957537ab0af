"""HeaderFlattener and snake_case of both twins (OpenTelemetry attributes)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


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
        ("event.header.l", ("x", "y"))]


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


def test_allowlist_counts_what_it_decodes_once(twin: ModuleType) -> None:
    """Every twin counts a header once, whether routing or the flattener decoded it."""
    event = _parsed(twin, b"Event-Name: E\nUnique-ID: u\nA: 1\nB: 2\nC: 3\n")
    assert event.get("A") == "1"
    flattener = twin.HeaderFlattener()
    assert flattener.flatten(event) == {
        "event.name": "E", "event.uuid": "u", "event.header.event_name": "E",
        "event.header.a": "1", "event.header.b": "2", "event.header.c": "3"}
    assert event.decoded == 5
    # Still lazy and still whole: the flattener decodes for the span, not into the event.
    assert dict(event) == {"Event-Name": "E", "Unique-ID": "u", "A": "1", "B": "2", "C": "3"}


def test_repeated_headers_become_one_tuple(twin: ModuleType) -> None:
    """A re-typed COMMAND carries Event-Name twice; interleaved repeats merge by name."""
    event = _parsed(twin, b"Event-Name: COMMAND\nX: 1\nEvent-Name: PRIVATE_COMMAND\n"
                          b"x: 2\nX: 3\nL: ARRAY%3A%3Aa%7C%3Ab\nL: c\n")
    assert twin.HeaderFlattener().flatten(event) == {
        "event.name": "PRIVATE_COMMAND",
        "event.header.event_name": ("COMMAND", "PRIVATE_COMMAND"),
        # X's two lines first (one name), then x, which flattens to the same key.
        "event.header.x": ("1", "3", "2"),
        "event.header.l": ("a", "b", "c")}


def test_names_sharing_a_key_merge_in_header_order(twin: ModuleType) -> None:
    event = _parsed(twin, b"Event-Name: E\nFoo-Bar: 1\nfoo_bar: 2\nFOO.BAR: 3\n")
    assert twin.HeaderFlattener().flatten(event)["event.header.foo_bar"] == ("1", "2", "3")


def test_full_cap_still_merges_known_keys(twin: ModuleType) -> None:
    event = _parsed(twin, b"Event-Name: E\nA: 1\nB: 2\na: 3\n")
    assert twin.HeaderFlattener(max_attributes=3).flatten(event) == {
        "event.name": "E", "event.header.event_name": "E", "event.header.a": ("1", "3")}


def test_a_materialized_event_flattens_the_same(twin: ModuleType) -> None:
    raw = b"Event-Name: E\nUnique-ID: u\nA: x%20y\nL: ARRAY%3A%3Aa%7C%3Ab\n"
    lazy = _parsed(twin, raw)
    read = _parsed(twin, raw)
    dict(read)
    changed = _parsed(twin, raw)
    changed["New"] = "n"
    flattener = twin.HeaderFlattener()
    expected = {"event.name": "E", "event.uuid": "u", "event.header.event_name": "E",
                "event.header.a": "x y", "event.header.l": ("a", "b")}
    assert flattener.flatten(lazy) == expected
    assert flattener.flatten(read) == expected
    assert flattener.flatten(changed) == {**expected, "event.header.new": "n"}


@pytest.mark.parametrize("capture", ["plain.bin", "json.bin", "xml.bin"])
def test_twins_flatten_the_corpus_alike(corpus: Path, capture: str) -> None:
    """Every message of the real captures gives the same attributes from both twins."""
    data = (corpus / capture).read_bytes()
    python = importlib.import_module("genesis._parser_py")
    compiled = pytest.importorskip("genesis._parser")
    for allowlist in (None, ["Channel-State", "Event-Subclass", "Caller-Destination-Number"]):
        expected = [python.HeaderFlattener(allowlist).flatten(m)
                    for m in python.Parser().feed(data)]
        flattener = compiled.HeaderFlattener(allowlist)
        assert [flattener.flatten(m) for m in compiled.Parser().feed(data)] == expected
        # The comparison saw real events: every header, or the allowlisted few.
        assert any(len(a) > (60 if allowlist is None else 3) for a in expected)
