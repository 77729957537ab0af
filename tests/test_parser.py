"""Framing, decoding, laziness and error behaviour of both parser twins."""

from __future__ import annotations

import collections.abc
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from genesis.exceptions import ProtocolError
from tests.conftest import _load_twin


def _event(lines: bytes, body: bytes | None = None) -> bytes:
    inner = lines + (b"\n" if body is None else b"Content-Length: %d\n\n" % len(body) + body)
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(inner) + inner


def _one(twin: ModuleType, data: bytes) -> Any:
    messages = twin.Parser().feed(data)
    assert len(messages) == 1
    return messages[0]


def test_reply_and_auth_request(twin: ModuleType) -> None:
    parser = twin.Parser()
    assert parser.feed(b"Content-Type: auth/req") == []
    assert parser.buffered == 22
    auth, reply = parser.feed(b"uest\n\nContent-Type: command/reply\nReply-Text: +OK accepted\n\n")
    assert auth.kind == twin.KIND_AUTH_REQUEST
    assert auth.content_type == "auth/request"
    assert auth.body is None and auth.raw_body is None
    assert dict(auth) == {"Content-Type": "auth/request"}
    assert reply.kind == twin.KIND_COMMAND_REPLY
    assert reply["Reply-Text"] == "+OK accepted"
    assert reply.name is None
    assert parser.buffered == 0


def test_api_response_body_is_bytes_counted(twin: ModuleType) -> None:
    body = "réponse ✓\n".encode()
    data = b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body
    message = _one(twin, data)
    assert message.kind == twin.KIND_API_RESPONSE
    assert message.body == "réponse ✓\n"
    assert message.raw_body == body
    assert message["Content-Length"] == str(len(body))


def test_plain_event_with_inner_body(twin: ModuleType) -> None:
    data = _event(b"Event-Name: BACKGROUND_JOB\nJob-UUID: abc\nJob-Command-Arg: a%20b%26c\n",
                  b"+OK done\n")
    event = _one(twin, data)
    assert event.kind == twin.KIND_EVENT
    assert event.content_type == "text/event-plain"
    assert event.name == "BACKGROUND_JOB"
    assert event.body == "+OK done\n"
    assert dict(event) == {"Event-Name": "BACKGROUND_JOB", "Job-UUID": "abc",
                           "Job-Command-Arg": "a b&c"}


def test_an_empty_header_name_is_a_header_like_any_other(twin: ModuleType) -> None:
    # Its name decodes to "" (a length-0 name, as the name cache's empty slots have).
    event = _one(twin, _event(b"Event-Name: X\n: empty-name\nA: 1\n: again\n"))
    assert dict(event) == {"Event-Name": "X", "": ["empty-name", "again"], "A": "1"}
    assert dict(twin.HeaderFlattener().flatten(_one(
        twin, _event(b"Event-Name: X\n: v\n")))) == {
        "event.name": "X", "event.header.event_name": "X", "event.header.": "v"}


def test_an_empty_header_name_in_a_fresh_process() -> None:
    # The name cache is process-wide: only in a fresh process is the slot the empty name
    # hashes to still free, where a lookup once took the free slot for a hit (segfault).
    code = (
        "import genesis._parser as p\n"
        "data = b'Event-Name: X\\n: v\\n\\n'\n"
        "frame = b'Content-Length: %d\\nContent-Type: text/event-plain\\n\\n' % len(data) + data\n"
        "(event,) = p.Parser().feed(frame)\n"
        "assert dict(event) == {'Event-Name': 'X', '': 'v'}, dict(event)\n"
    )
    if importlib.util.find_spec("genesis._parser") is None:
        pytest.skip("the compiled twin is not built")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_crlf_and_leading_blank_lines(twin: ModuleType) -> None:
    data = (b"\n\r\nContent-Type: command/reply\r\nReply-Text: +OK\r\n\r\n"
            b"\nContent-Type: api/response\r\nContent-Length: 3\r\n\r\nabc")
    reply, api = twin.Parser().feed(data)
    assert reply["Reply-Text"] == "+OK"
    assert api.body == "abc"


def test_header_line_split_rules(twin: ModuleType) -> None:
    message = _one(twin, b"Content-Type: x/y\nA:no-space\nB:  two\nC: d: e\nD: \n\n")
    assert message.kind == twin.KIND_UNKNOWN
    assert message["A"] == "no-space"
    assert message["B"] == " two"
    assert message["C"] == "d: e"
    assert message["D"] == ""


def test_unknown_and_missing_content_type(twin: ModuleType) -> None:
    first, second = twin.Parser().feed(
        b"X-Thing: 1\n\nContent-Type: foo/bar\nContent-Length: 2\n\nhi")
    assert first.kind == twin.KIND_UNKNOWN and first.content_type == ""
    assert second.kind == twin.KIND_UNKNOWN and second.body == "hi"


@pytest.mark.parametrize(("ctype", "kind"), [
    ("log/data", "KIND_LOG"), ("text/disconnect-notice", "KIND_DISCONNECT_NOTICE"),
    ("text/rude-rejection", "KIND_RUDE_REJECTION")])
def test_other_kinds_keep_headers_literally(twin: ModuleType, ctype: str, kind: str) -> None:
    body = b"Access Denied, go away.\n"
    data = b"Content-Type: %s\nContent-Length: %d\nLog-File: a%%20b\n\n" % (
        ctype.encode(), len(body)) + body
    message = _one(twin, data)
    assert message.kind == getattr(twin, kind)
    assert message["Log-File"] == "a%20b"
    assert message.body == body.decode()
    assert message.name is None


def test_connect_reply_values_are_decoded(twin: ModuleType) -> None:
    message = _one(twin, b"Event-Name: CHANNEL_DATA\nContent-Type: command/reply\n"
                         b"Reply-Text: %2BOK%0A\nvariable_x: ARRAY%3A%3Aa%7C%3Ab\n\n")
    assert message.kind == twin.KIND_COMMAND_REPLY
    assert message["Reply-Text"] == "+OK\n"
    assert message["variable_x"] == ["a", "b"]


def test_custom_event_routing_name(twin: ModuleType) -> None:
    event = _one(twin, _event(b"Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister\n"))
    assert event.name == "sofia::register"
    assert event["Event-Subclass"] == "sofia::register"


def test_json_and_xml_events(twin: ModuleType) -> None:
    doc = (b'{"Event-Name":"CUSTOM","Event-Subclass":"a::b","L":["x","y"],'
           b'"Content-Length":"2","_body":"hi"}')
    event = _one(twin, b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(doc) + doc)
    assert event.name == "a::b"
    assert dict(event) == {"Event-Name": "CUSTOM", "Event-Subclass": "a::b", "L": ["x", "y"]}
    assert event.body == "hi"
    xml = (b"<event>\n  <headers>\n    <Event-Name>DTMF</Event-Name>\n    <D>%23</D>\n"
           b"    <L>x</L>\n    <L>y</L>\n    <E/>\n  </headers>\n"
           b"  <Content-Length>5</Content-Length>\n"
           b"  <body>a&lt;b\n\n  </body>\n</event>\n")
    event = _one(twin, b"Content-Length: %d\nContent-Type: text/event-xml\n\n" % len(xml) + xml)
    assert dict(event) == {"Event-Name": "DTMF", "D": "#", "L": ["x", "y"], "E": ""}
    assert event.body == "a<b\n\n"


def test_values_decode_without_raising(twin: ModuleType) -> None:
    event = _one(twin, _event(b"Event-Name: X\nBad: 100%\nHalf: %4\nNotHex: %zz%41+1\n"
                              b"Latin1: caf%E9\nUtf8: caf%C3%a9\nRawBad: \xff\xfe\n"))
    assert event["Bad"] == "100%"
    assert event["Half"] == "%4"
    assert event["NotHex"] == "%zzA+1"
    assert event["Utf8"] == "café"
    assert event["Latin1"].encode("utf-8", "surrogateescape") == b"caf\xe9"
    assert event["RawBad"].encode("utf-8", "surrogateescape") == b"\xff\xfe"
    json.dumps(dict(event), ensure_ascii=True)  # lone surrogates serialize as \udcxx escapes


def test_invalid_utf8_names_and_bodies(twin: ModuleType) -> None:
    event = _one(twin, _event(b"Event-Name: X\nN\xe9: v\n", b"\xff body"))
    assert "N\udce9" in event
    assert event.raw_body == b"\xff body"
    assert event.body.encode("utf-8", "surrogateescape") == b"\xff body"


def test_mapping_protocol(twin: ModuleType) -> None:
    event = _one(twin, _event(b"Event-Name: A\nDup: 1\nX: y\nDup: 2\n"))
    assert isinstance(event, collections.abc.MutableMapping)
    assert isinstance(event, collections.abc.Mapping)
    assert "X" in event and "Nope" not in event and 3 not in event
    assert event.get("Nope") is None and event.get("Nope", 7) == 7
    assert event["Dup"] == ["1", "2"]
    assert list(event) == ["Event-Name", "Dup", "X"]
    assert len(event) == 3
    assert dict(event.items()) == {"Event-Name": "A", "Dup": ["1", "2"], "X": "y"}
    assert json.loads(json.dumps(dict(event))) == dict(event)
    with pytest.raises(KeyError):
        event["Nope"]
    event["New"] = "v"
    del event["X"]
    assert dict(event) == {"Event-Name": "A", "Dup": ["1", "2"], "New": "v"}
    assert event.copy() == dict(event) and type(event.copy()) is dict
    with pytest.raises(TypeError):
        event["Bad"] = 5
    assert "A" in repr(event)


def test_user_built_event_and_equality(twin: ModuleType) -> None:
    built = twin.ESLEvent({"Event-Name": "A", "X": ["1", "2"]}, body="b")
    assert built.kind == twin.KIND_EVENT and built.content_type == "text/event-plain"
    assert built.name == "A" and built.body == "b" and built.raw_body == b"b"
    from_pairs = twin.ESLEvent([("Event-Name", "A"), ("X", "1"), ("X", "2")], body=b"b")
    assert built == from_pairs
    assert built == {"Event-Name": "A", "X": ["1", "2"]}
    assert built != twin.ESLEvent({"Event-Name": "A", "X": ["1", "2"]})
    parsed = _one(twin, _event(b"Event-Name: A\nX: ARRAY%3A%3A1%7C%3A2\n", b"b"))
    assert parsed == built
    assert twin.ESLEvent() == {} and twin.ESLEvent().name is None


def test_laziness_decodes_only_what_is_read(twin: ModuleType) -> None:
    lines = b"".join(b"H-%d: value%%20%d\n" % (i, i) for i in range(148))
    event = _one(twin, _event(b"Event-Name: BIG\n" + lines + b"Broken: %G%\n"))
    assert event.decoded == 0
    assert event["H-7"] == "value 7"
    assert event["H-100"] == "value 100"
    assert event["H-7"] == "value 7"
    assert event.decoded == 2
    assert "H-5" in event and event.decoded == 2
    assert len(event) == 150
    assert event.decoded == 150
    assert event["Broken"] == "%G%"


def test_json_and_user_events_are_eager(twin: ModuleType) -> None:
    doc = b'{"Event-Name":"A","B":"c"}'
    event = _one(twin, b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(doc) + doc)
    assert event.decoded == 2
    assert twin.ESLEvent({"A": "b"}).decoded == 1


def _error(twin: ModuleType, data: bytes, parser: Any = None) -> ProtocolError:
    parser = parser or twin.Parser()
    with pytest.raises(ProtocolError) as caught:
        parser.feed(data)
    return caught.value


GOOD = b"Content-Type: command/reply\nReply-Text: +OK\n\n"


@pytest.mark.parametrize(("bad", "reason"), [
    (b"Content-Type: command/reply\nno colon here\n\n", "without ':'"),
    (b"Content-Length: abc\n\n", "not a decimal"),
    (b"Content-Length: -1\n\n", "not a decimal"),
    (b"Content-Length: \n\n", "not a decimal"),
    (b"Content-Length: 1\nContent-Length: 2\n\nab", "two different"),
    (b"Content-Length: 99999999\n\n", "exceeds max_body_size"),
    (b"Content-Length: 4\nContent-Type: text/event-plain\n\nA: b", "inner header"),
    (b"Content-Length: 26\nContent-Type: text/event-plain\n\nA: b\nContent-Length: 5\n\nab",
     "truncated"),
    (b"Content-Length: 9\nContent-Type: text/event-plain\n\nA: b\n\nxyz",
     "no inner Content-Length"),
    (b"Content-Length: 3\nContent-Type: text/event-json\n\n{x}", "JSON"),
    (b"Content-Length: 2\nContent-Type: text/event-json\n\n[]", "JSON"),
    (b"Content-Length: 8\nContent-Type: text/event-json\n\n{\"a\": 1}", "JSON"),
    (b"Content-Length: 7\nContent-Type: text/event-xml\n\n<event>", "XML"),
    (b"Content-Length: 42\nContent-Type: text/event-xml\n\n"
     b"<event><headers><a>b</c></headers></event>", "XML"),
])
def test_errors_carry_offset_and_excerpt(twin: ModuleType, bad: bytes, reason: str) -> None:
    parser = twin.Parser(max_body_size=1 << 20)
    error = _error(twin, GOOD + bad, parser)
    assert reason in error.reason
    assert error.offset == len(GOOD)
    assert error.excerpt and len(error.excerpt) <= 64
    assert [m["Reply-Text"] for m in error.messages] == ["+OK"]
    # Sticky until reset(): even good bytes are refused, with the same location.
    again = _error(twin, GOOD, parser)
    assert again.offset == error.offset and again.excerpt == error.excerpt
    parser.reset()
    assert parser.offset == 0 and parser.buffered == 0
    assert [m["Reply-Text"] for m in parser.feed(GOOD)] == ["+OK"]


def test_excerpt_points_at_the_bad_line(twin: ModuleType) -> None:
    error = _error(twin, b"Content-Type: x\nthis line is bad\nA: b\n\n")
    assert error.excerpt == b"this line is bad"
    assert error.offset == 0


def test_event_line_without_colon_fails_the_read_that_indexes(twin: ModuleType) -> None:
    # Framing a plain event does not walk its lines (docs/architecture.md): the bad
    # line is found by the first read that needs the line index, and every such
    # read raises it again, with the frame's offset and the line as excerpt.
    body = b"Event-Name: CUSTOM\nEvent-Subclass: x::y\nA: b\nnope\n\n"
    bad = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body
    parser = twin.Parser()
    replies = parser.feed(GOOD + bad + GOOD)
    assert [m.kind for m in replies] == [twin.KIND_COMMAND_REPLY, twin.KIND_EVENT,
                                         twin.KIND_COMMAND_REPLY]
    event = replies[1]
    # Routing names on a single line are read without the index.
    assert event.name == "x::y"
    assert event.get("Unique-ID") is None
    assert event.decoded == 2
    reads: list[Callable[[], object]] = [
        lambda: event["A"], lambda: event.get("A"), lambda: "A" in event,
        lambda: len(event), lambda: dict(event), lambda: list(event.keys()),
        lambda: event == {}, lambda: event.copy()]
    for read in reads:
        with pytest.raises(ProtocolError) as caught:
            read()
        assert "without ':'" in caught.value.reason
        assert caught.value.offset == len(GOOD)
        assert caught.value.excerpt == b"nope"
    assert replies[2]["Reply-Text"] == "+OK"
    # Nothing was half-built: the stream after it parses on.
    assert parser.feed(GOOD)[0]["Reply-Text"] == "+OK"


def test_line_without_colon_excerpt_drops_the_cr(twin: ModuleType) -> None:
    # The excerpt is the line as the header reader sees it: a CRLF ending is not in it.
    assert _error(twin, b"Content-Type: x\r\nbad\r\n\r\n").excerpt == b"bad"
    body = b"A: b\r\nbad\r\n\r\n"
    event = twin.Parser().feed(
        b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body)[0]
    with pytest.raises(ProtocolError) as caught:
        event["A"]
    assert caught.value.excerpt == b"bad"


def test_event_line_without_colon_in_a_repeated_routing_name(twin: ModuleType) -> None:
    # A repeated Event-Name must be merged, which takes the line index: .name raises.
    body = b"Event-Name: COMMAND\nbad\nEvent-Name: PRIVATE_COMMAND\n\n"
    event = twin.Parser().feed(
        b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body)[0]
    with pytest.raises(ProtocolError, match="without ':'"):
        _ = event.name
    with pytest.raises(ProtocolError, match="without ':'"):
        event.get("Event-Name")
    assert event.decoded == 0


def test_header_block_that_never_ends_is_bounded(twin: ModuleType) -> None:
    parser = twin.Parser(max_header_size=1024)
    line = b"X-Filler: " + b"a" * 90 + b"\n"
    for _ in range(10):
        assert parser.feed(line) == []
    assert parser.buffered == 1010
    error = _error(twin, line, parser)
    assert "max_header_size" in error.reason
    # The same block in one piece fails the same way, even with its end included.
    whole = _error(twin, line * 11 + b"\n", twin.Parser(max_header_size=1024))
    assert (whole.reason, whole.offset) == (error.reason, error.offset)
    assert twin.Parser(max_header_size=1111 + 1).feed(line * 11 + b"\n")


def test_blank_lines_alone_never_accumulate(twin: ModuleType) -> None:
    parser = twin.Parser(max_header_size=16)
    for _ in range(100):
        assert parser.feed(b"\r\n\n" * 50) == []
    assert parser.buffered == 0
    assert parser.offset == 100 * 150


def test_limits_are_configurable(twin: ModuleType) -> None:
    data = b"Content-Type: api/response\nContent-Length: 10\n\n0123456789"
    assert _one(twin, data).body == "0123456789"
    parser = twin.Parser(max_body_size=9)
    assert "max_body_size" in _error(twin, data, parser).reason
    with pytest.raises(ValueError):
        twin.Parser(max_header_size=0)


def test_body_split_across_feeds(twin: ModuleType) -> None:
    data = _event(b"Event-Name: A\n", b"0123456789" * 100)
    parser = twin.Parser()
    out: list[Any] = []
    for i in range(0, len(data), 7):
        out += parser.feed(memoryview(data)[i:i + 7])
        assert parser.offset + parser.buffered == min(i + 7, len(data))
    assert [e.body for e in out] == ["0123456789" * 100]
    assert parser.feed(bytearray(GOOD))[0]["Reply-Text"] == "+OK"


def test_shared_chunks_are_let_go_by_release(twin: ModuleType) -> None:
    """Parser(share=True): events use the fed chunk itself until release() ends it."""
    frames = [_event(b"Event-Name: E%d\nUnique-ID: u%d\n" % (i, i), b"body %d" % i)
              for i in range(5)]
    chunk = b"".join(frames) + frames[0][:40]  # and the start of a frame to hold
    base = sys.getrefcount(chunk)
    parser = twin.Parser(share=True)
    out = parser.feed(chunk)
    assert [e.name for e in out] == ["E0", "E1", "E2", "E3", "E4"]
    if twin.__name__ == "genesis._parser":
        assert sys.getrefcount(chunk) == base + 5  # not a byte copied per event
    kept = out[3]
    read_before = out[1]["Unique-ID"]
    parser.release(out)
    del out
    # The kept event owns a copy of its frame now; the others went with the list.
    assert sys.getrefcount(chunk) == base
    assert read_before == "u1"
    assert kept == twin.Parser().feed(frames[3])[0]
    assert kept.body == "body 3" and kept["Unique-ID"] == "u3"
    assert [e.name for e in parser.feed(frames[0][40:])] == ["E0"]


def test_shared_chunks_never_share_mutable_input(twin: ModuleType) -> None:
    data = bytearray(_event(b"Event-Name: KEPT\nUnique-ID: u1\n"))
    parser = twin.Parser(share=True)
    (event,) = parser.feed(data)
    data[:] = b"x" * len(data)
    assert event.name == "KEPT" and dict(event)["Unique-ID"] == "u1"


def test_parse_headers_compatibility() -> None:
    from genesis.protocol.parser import ESLEvent, parse_headers

    event = parse_headers("Event-Name: CUSTOM\r\nEvent-Subclass: a%3A%3Ab\n\nContent-Length: 5\n"
                          "Dup: 1\nDup: 2\nArr: ARRAY::x|:y\n")
    assert isinstance(event, ESLEvent)
    assert dict(event) == {"Event-Name": "CUSTOM", "Event-Subclass": "a::b",
                           "Content-Length": "5", "Dup": ["1", "2"], "Arr": ["x", "y"]}
    assert event.name == "a::b"
    assert dict(parse_headers("")) == {}
    with pytest.raises(ProtocolError):
        parse_headers("Good: 1\nbad line\n")


def test_selector_module() -> None:
    import os

    from genesis.protocol import parser

    expected = "python" if os.environ.get("GENESIS_NO_EXTENSIONS") == "1" else parser.IMPLEMENTATION
    assert expected == parser.IMPLEMENTATION
    assert parser.IMPLEMENTATION in ("compiled", "python")
    assert parser.MessageKind.EVENT == parser.KIND_EVENT == 4
    assert [int(k) for k in parser.MessageKind] == list(range(1, 9))
    module = parser.Parser.__module__
    compiled = parser.IMPLEMENTATION == "compiled"
    assert module == ("genesis._parser" if compiled else "genesis._parser_py")


@pytest.mark.parametrize("name_len", [1, 14, 15, 16, 17, 31, 32, 33, 60])
@pytest.mark.parametrize("tail", [b"", b"Z: z\n" * 3])
def test_the_colon_is_found_wherever_it_falls(twin: ModuleType, name_len: int,
                                              tail: bytes) -> None:
    # The index looks for a line's colon 16 bytes at a time while 16 bytes of the block
    # are left, byte by byte after that: names on both sides of every boundary, near
    # the end of the block and not, with and without a colon in the value too.
    name = b"N" * name_len
    body = b"A: b\n" + name + b": v:w\n" + tail + b"\n"
    event = twin.Parser().feed(
        b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body)[0]
    assert dict(event)[name.decode()] == "v:w"
    bad = b"A: b\n" + name + b"\n" + tail + b"\n"
    event = twin.Parser().feed(
        b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(bad) + bad)[0]
    with pytest.raises(ProtocolError) as caught:
        dict(event)
    assert caught.value.excerpt == name


def _frame(content_type: bytes, payload: bytes) -> bytes:
    return b"Content-Length: %d\nContent-Type: %s\n\n" % (len(payload), content_type) + payload


def _plain(block: bytes, rest: bytes = b"") -> bytes:
    return _frame(b"text/event-plain", block + b"\n" + rest)


_XML_OK = b"<event>\n  <headers>\n    <Event-Name>A</Event-Name>\n"
# Every bad input the framer and the event readers refuse, as the wire would carry it.
BAD_INPUTS = {
    "no colon": b"Content-Type: command/reply\nno colon here\n\n",
    "frame lengths differ": b"Content-Type: x\nContent-Length: 1\nContent-Length: 2\n\nab",
    "frame length not decimal": b"Content-Length: 1x\n\n",
    "frame length too large": b"Content-Length: 0099999999\n\n",
    "no inner block": _frame(b"text/event-plain", b"A: b"),
    "inner lengths differ": _plain(b"A: b\nContent-Length: 1\nContent-Length: 2\n", b"ab"),
    "inner length not decimal": _plain(b"A: b\nContent-Length: x\n", b"ab"),
    "inner length too large": _plain(b"A: b\nContent-Length: 0099999999\n", b"ab"),
    "inner body truncated": _plain(b"A: b\nContent-Length: 5\n", b"ab"),
    "inner body followed": _plain(b"A: b\nContent-Length: 1\n", b"ab"),
    "bytes without inner length": _plain(b"A: b\n", b"xyz"),
    "json does not parse": _frame(b"text/event-json", b"{x}"),
    "json not an object": _frame(b"text/event-json", b"[]"),
    "json header not a string": _frame(b"text/event-json", b'{"a": 1}'),
    "json body not a string": _frame(b"text/event-json", b'{"_body": 1}'),
    "xml does not parse": _frame(b"text/event-xml", b"<event>"),
    "xml header does not parse": _frame(
        b"text/event-xml", _XML_OK + b"    <a>b</c>\n  </headers>\n</event>\n"),
    "xml header and trailer bad": _frame(
        b"text/event-xml", _XML_OK + b"    <a>b</c>\n  </headers>\n</evnt>\n"),
    "xml header cut short": _frame(b"text/event-xml", _XML_OK + b"    <a>b"),
    "xml reference out of range": _frame(
        b"text/event-xml", _XML_OK + b"    <a>&#1114112;</a>\n  </headers>\n</event>\n"),
    "xml length not decimal": _frame(
        b"text/event-xml", _XML_OK + b"  </headers>\n  <Content-Length>x</Content-Length>\n"
                           b"  <body>ab</body>\n</event>\n"),
    "xml body longer than length": _frame(
        b"text/event-xml", _XML_OK + b"  </headers>\n  <Content-Length>1</Content-Length>\n"
                           b"  <body>ab</body>\n</event>\n"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_twins_refuse_bad_input_alike(name: str) -> None:
    def refusal(twin: ModuleType) -> tuple[str, int, bytes, list[Any]]:
        error = _error(twin, GOOD + BAD_INPUTS[name], twin.Parser(max_body_size=1 << 20))
        return error.reason, error.offset, error.excerpt, [dict(m) for m in error.messages]

    compiled = refusal(_load_twin("compiled"))
    assert compiled == refusal(_load_twin("python"))
    assert compiled[1] == len(GOOD) and 0 < len(compiled[2]) <= 64
