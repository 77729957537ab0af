"""``keys()`` and ``dict(event)`` of parsed events, over both twins.

The compiled twin answers ``keys()`` of a lazy event with its own view and serves
the ``event[name]`` calls of ``dict(event)`` from the line index; these tests pin
that this is invisible: same mapping, same view behaviour, same laziness probe.
"""

from __future__ import annotations

import gc
from collections.abc import KeysView
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from genesis.exceptions import ProtocolError


def _event(twin: ModuleType, headers: bytes) -> Any:
    frame = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % (len(headers) + 1)
    (message,) = twin.Parser().feed(frame + headers + b"\n")
    return message


HEADERS = (b"Event-Name: CHANNEL_STATE\nUnique-ID: u-1\nChannel-State: CS_INIT\n"
           b"Caller-Caller-ID-Name: Jane%20Doe\nL: ARRAY%3A%3Ax%7C%3Ay\n")
EXPECTED = {"Event-Name": "CHANNEL_STATE", "Unique-ID": "u-1", "Channel-State": "CS_INIT",
            "Caller-Caller-ID-Name": "Jane Doe", "L": ["x", "y"]}


def test_dict_of_every_corpus_event_equals_its_copy(twin: ModuleType, corpus: Path) -> None:
    data = (corpus / "plain.bin").read_bytes()
    copies = [message.copy() for message in twin.Parser().feed(data)]
    dicts = [dict(message) for message in twin.Parser().feed(data)]
    assert dicts == copies
    # Repeated names (CODEC, CHANNEL_HANGUP_COMPLETE, COMMAND) are in there too.
    assert any(isinstance(value, list) for d in dicts for value in d.values())
    assert all(list(d) == list(c) for d, c in zip(dicts, copies, strict=True))


def test_dict_merges_repeated_names(twin: ModuleType) -> None:
    event = _event(twin, b"Event-Name: A\nX: 1\nY: 2\nX: 3\n")
    assert dict(event) == {"Event-Name": "A", "X": ["1", "3"], "Y": "2"}
    assert event.decoded == 3
    assert list(event.keys()) == ["Event-Name", "X", "Y"]


def test_repeats_and_arrays_merge_in_wire_order(twin: ModuleType) -> None:
    event = _event(twin, b"A: ARRAY%3A%3A1%7C%3A2\nB: b\nA: 3\nC: c\nA: ARRAY%3A%3A4%7C%3A5\n"
                         b"B: ARRAY%3A%3Ax%7C%3Ay\n")
    keys = event.keys()
    assert len(keys) == 3 and event.decoded == 3
    assert event["C"] == "c" and event["B"] == ["b", "x", "y"]
    assert dict(event) == {"A": ["1", "2", "3", "4", "5"], "B": ["b", "x", "y"], "C": "c"}
    assert list(keys) == ["A", "B", "C"]


def test_dict_and_keys_decode_everything_once(twin: ModuleType) -> None:
    event = _event(twin, HEADERS)
    assert event.decoded == 0
    assert dict(event) == EXPECTED
    assert event.decoded == 5
    event = _event(twin, HEADERS)
    assert len(event.keys()) == 5 and event.decoded == 5
    assert dict(event) == EXPECTED and event.decoded == 5


def test_reads_after_keys_in_any_order(twin: ModuleType) -> None:
    event = _event(twin, HEADERS)
    names = list(event.keys())
    assert names == list(EXPECTED)
    for name in reversed(names):
        assert event[name] == EXPECTED[name]
    assert event["Unique-ID"] == "u-1" and event["Unique-ID"] == "u-1"
    assert event.get("Missing") is None
    with pytest.raises(KeyError):
        event["Missing"]
    assert [event[name] for name in names] == list(EXPECTED.values())
    assert dict(event) == EXPECTED


def test_keys_view_behaves_like_dict_keys(twin: ModuleType) -> None:
    event = _event(twin, HEADERS)
    keys = event.keys()
    reference = EXPECTED.keys()
    assert isinstance(event.keys(), KeysView)
    assert len(keys) == 5 and "L" in keys and "Missing" not in keys
    assert keys == reference and reference == keys and keys == set(EXPECTED)
    assert (keys != reference) is False and keys != {"L"}
    assert keys & {"L", "Z"} == {"L"} and {"L", "Z"} & keys == {"L"}
    assert keys | {"Z"} == set(EXPECTED) | {"Z"} and {"Z"} | keys == set(EXPECTED) | {"Z"}
    assert keys - {"L"} == set(EXPECTED) - {"L"} and {"L", "Z"} - keys == {"Z"}
    assert keys ^ {"L", "Z"} == set(EXPECTED) ^ {"L", "Z"}
    assert keys <= set(EXPECTED) and keys < set(EXPECTED) | {"Z"} and not keys > reference
    assert keys >= {"L"} and not keys.isdisjoint({"L"})
    assert list(reversed(keys)) == list(reversed(reference))
    assert repr(keys) == repr(reference)
    with pytest.raises(TypeError):
        hash(keys)


def test_keys_view_is_live(twin: ModuleType) -> None:
    event = _event(twin, HEADERS)
    keys = event.keys()
    event["New"] = "v"
    del event["L"]
    assert list(keys) == ["Event-Name", "Unique-ID", "Channel-State", "Caller-Caller-ID-Name",
                          "New"]
    assert len(keys) == 5 and "New" in keys and "L" not in keys
    assert dict(event) == {**{k: v for k, v in EXPECTED.items() if k != "L"}, "New": "v"}


def test_mutation_while_iterating_keys_is_a_dicts(twin: ModuleType) -> None:
    event = _event(twin, HEADERS)
    view = event.keys()
    for name in view:
        event[name] = "x"
    assert dict(event) == dict.fromkeys(EXPECTED, "x")
    event = _event(twin, HEADERS)
    view = event.keys()
    with pytest.raises(RuntimeError):
        for name in view:
            del event[name]
    event = _event(twin, HEADERS)
    walk = iter(event.keys())
    assert [next(walk), next(walk)] == ["Event-Name", "Unique-ID"]
    event["Unique-ID"] = "u-2"
    assert list(walk) == ["Channel-State", "Caller-Caller-ID-Name", "L"]


def test_mutation_after_keys_keeps_decoded_values(twin: ModuleType) -> None:
    event = _event(twin, HEADERS)
    event.keys()
    event["Channel-State"] = "CS_ROUTING"
    assert event["L"] == ["x", "y"] and event["Caller-Caller-ID-Name"] == "Jane Doe"
    assert event.name == "CHANNEL_STATE" and event.decoded == 5
    assert event == {**EXPECTED, "Channel-State": "CS_ROUTING"}


def test_dict_shares_array_values_with_the_event(twin: ModuleType) -> None:
    # As a materialized dict would: the list dict(event) holds is the event's own.
    event = _event(twin, HEADERS)
    first = dict(event)
    first["L"].append("z")
    assert event["L"] == ["x", "y", "z"]
    event["New"] = "v"
    assert event["L"] is first["L"]


def test_no_headers_and_non_events(twin: ModuleType) -> None:
    (empty,) = twin.Parser().feed(b"Content-Length: 1\nContent-Type: text/event-plain\n\n\n")
    assert dict(empty) == {} and list(empty.keys()) == [] and len(empty.keys()) == 0
    (reply,) = twin.Parser().feed(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
    assert dict(reply) == {"Content-Type": "command/reply", "Reply-Text": "+OK accepted"}
    assert reply.decoded == 2


def _keys_while_a_finalizer_lists(event: Any, other: Any) -> tuple[list[str], list[list[str]]]:
    """``list(event.keys())`` while the first allocation runs a collection whose
    finalizer lists ``other``; the names, and what the finalizer listed."""
    seen: list[list[str]] = []

    class Finalized:
        def __init__(self) -> None:
            self.cycle = self

        def __del__(self) -> None:
            seen.append(list(other.keys()))

    gc.collect()
    Finalized()
    threshold = gc.get_threshold()
    gc.set_threshold(1)
    try:
        names = list(event.keys())
    finally:
        gc.set_threshold(*threshold)
    gc.collect()
    return names, seen


def test_keys_reentered_from_a_finalizer(twin: ModuleType) -> None:
    # The ARRAY:: list allocated while listing the first event starts a collection
    # whose finalizer lists another event: the repeat of B must still merge.
    event = _event(twin, b"B: b\nA: ARRAY%3A%3A1%7C%3A2\nB: c\n")
    other = _event(twin, HEADERS)
    names, seen = _keys_while_a_finalizer_lists(event, other)
    assert seen == [list(EXPECTED)]
    assert names == ["B", "A"]
    assert dict(event) == {"B": ["b", "c"], "A": ["1", "2"]}


# Lines a parser has met before are answered from a process-wide cache keyed by the
# line's bytes: each test below lists an event twice, so the second pass is served
# from it, and must not be told apart from the first.
LONG = "v" * 120  # longer than the cache holds
SEEN_TWICE = (b"Event-Name: CUSTOM\r\nEvent-Subclass: x%3A%3Ay\r\nA: 1\r\nB: b\r\nA: 2\r\n"
              b"Long: " + LONG.encode() + b"\r\nC: ARRAY%3A%3Ap%7C%3Aq\r\nA: 3\r\n")
SEEN_TWICE_DICT = {"Event-Name": "CUSTOM", "Event-Subclass": "x::y", "A": ["1", "2", "3"],
                   "B": "b", "Long": LONG, "C": ["p", "q"]}


def _event_with_body(twin: ModuleType, headers: bytes, body: bytes) -> Any:
    inner = headers + b"Content-Length: %d\r\n\r\n" % len(body) + body
    frame = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(inner)
    (message,) = twin.Parser().feed(frame + inner)
    return message


def test_a_listed_event_lists_the_same_again(twin: ModuleType) -> None:
    for _ in range(2):
        event = _event_with_body(twin, SEEN_TWICE, b"the body")
        assert dict(event) == SEEN_TWICE_DICT and event.decoded == 6
        assert list(event.keys()) == list(SEEN_TWICE_DICT)
        assert event.name == "x::y" and event.body == "the body"
        # The lines are framing's too: the body's Content-Length is not a header.
        assert "Content-Length" not in event


def test_lines_that_sample_alike_are_told_apart(twin: ModuleType) -> None:
    # Two 60-byte lines that differ in one byte near their middle, which the line
    # cache's hash does not read: they share a slot, and only the compare of the bytes
    # tells the second from the first.
    first = b"X-Probe-Collision: " + b"a" * 41
    second = first[:20] + b"b" + first[21:]
    assert len(first) == len(second) == 60
    for line in (first, second, first, second):
        event = _event(twin, b"Event-Name: A\n" + line + b"\n")
        assert dict(event) == {"Event-Name": "A", "X-Probe-Collision": line[19:].decode()}


def test_a_line_without_colon_after_known_lines_fails_every_listing(twin: ModuleType) -> None:
    good = b"Event-Name: A\nB: b\n"
    assert dict(_event(twin, good)) == {"Event-Name": "A", "B": "b"}
    event = _event(twin, good + b"no colon here\nC: c\n")
    for _ in range(2):
        with pytest.raises(ProtocolError, match="without ':'") as caught:
            event.keys()
        assert caught.value.excerpt == b"no colon here"
    assert event.get("Event-Name") == "A"


def test_keys_reentered_from_a_finalizer_after_a_repeat_merged(twin: ModuleType) -> None:
    # Every line of the event is known, so listing it allocates nothing until the
    # repeat of B is merged into a list; that allocation starts a collection whose
    # finalizer lists another event carrying B. The lines after it must still see
    # that this event's B was met already.
    headers = b"B: b\nB: c\nC: x\nB: d\n"
    assert dict(_event(twin, headers)) == {"B": ["b", "c", "d"], "C": "x"}
    event = _event(twin, headers)
    other = _event(twin, b"B: other\n")
    names, seen = _keys_while_a_finalizer_lists(event, other)
    assert seen == [["B"]] and dict(other) == {"B": "other"}
    assert names == ["B", "C"]
    assert dict(event) == {"B": ["b", "c", "d"], "C": "x"}
