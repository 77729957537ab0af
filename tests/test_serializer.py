"""serialize_event and encode_value of both twins: FreeSWITCH's exact bytes."""

from __future__ import annotations

import json
from types import ModuleType

import pytest


def test_encode_value_matches_freeswitch(twin: ModuleType) -> None:
    assert twin.encode_value("fd00::2") == "fd00%3A%3A2"
    assert twin.encode_value("Wed, 25 Nov 2026") == "Wed,%2025%20Nov%202026"
    assert twin.encode_value("#") == "%23"
    assert twin.encode_value("{a=b}x/y (z) &park()") == "%7Ba%3Db%7Dx/y%20(z)%20%26park()"
    assert twin.encode_value('"#%&+:;<=>?@[\\]^`{|}') == (
        "%22%23%25%26%2B%3A%3B%3C%3D%3E%3F%40%5B%5C%5D%5E%60%7B%7C%7D")
    assert twin.encode_value("!$'()*,-./_~") == "!$'()*,-./_~"
    assert twin.encode_value("é\n\x7f") == "%C3%A9%0A%7F"
    assert twin.encode_value("\udcff") == "%FF"
    # Always encoded, so that decoding is exact (FreeSWITCH would pass '%41' through).
    assert twin.encode_value("%41") == "%2541"


def test_plain_frame_layout(twin: ModuleType) -> None:
    wire = twin.serialize_event({"Event-Name": "DTMF", "DTMF-Digit": "#"})
    assert wire == (b"Content-Length: 34\nContent-Type: text/event-plain\n\n"
                    b"Event-Name: DTMF\nDTMF-Digit: %23\n\n")
    wire = twin.serialize_event({"Event-Name": "BACKGROUND_JOB", "L": ["a", "b"]}, body="+OK x\n")
    payload = (b"Event-Name: BACKGROUND_JOB\nL: ARRAY%3A%3Aa%7C%3Ab\nContent-Length: 6\n\n"
               b"+OK x\n")
    head = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(payload)
    assert wire == head + payload


def test_json_frame_layout(twin: ModuleType) -> None:
    wire = twin.serialize_event({"A": 'q"\\\n\t\x01é', "L": ["x", "y"]}, "json", body=b"\xff\n")
    payload = wire.split(b"\n\n", 1)[1]
    assert payload == (b'{"A":"q\\"\\\\\\n\\t\\u0001\xc3\xa9","L":["x","y"],'
                       b'"Content-Length":"2","_body":"\xff\\n"}')
    assert wire.startswith(b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(payload))
    assert json.loads(payload.decode("utf-8", "surrogateescape"))["L"] == ["x", "y"]


def test_xml_frame_layout(twin: ModuleType) -> None:
    wire = twin.serialize_event({"A": "a b", "L": ["x", "y"], "One": ["z"]}, "xml", body="1<2\n")
    payload = wire.split(b"\n\n", 1)[1]
    assert payload == (b"<event>\n  <headers>\n    <A>a%20b</A>\n    <L>x</L>\n    <L>y</L>\n"
                       b"    <One>ARRAY%3A%3Az</One>\n  </headers>\n"
                       b"  <Content-Length>4</Content-Length>\n  <body>1&lt;2\n  </body>\n"
                       b"</event>\n")
    assert twin.serialize_event({"A": "b"}, "xml", body="x").endswith(b"<body>x</body>\n</event>\n")


def test_event_body_is_used_unless_given(twin: ModuleType) -> None:
    event = twin.ESLEvent({"Event-Name": "A"}, body="own")
    assert twin.serialize_event(event).endswith(b"\n\nown")
    assert twin.serialize_event(event, body="other").endswith(b"\n\nother")
    (parsed,) = twin.Parser().feed(twin.serialize_event(event, "json"))
    assert parsed.body == "own"


@pytest.mark.parametrize(("fmt", "headers"), [
    ("plain", {"Content-Length": "1"}), ("json", {"_body": "x"}), ("plain", {"a:b": "c"}),
    ("plain", {"a\nb": "c"}), ("plain", {"": "c"}), ("xml", {"a b": "c"}), ("xml", {"a/b": "c"}),
    ("plain", {"A": "ARRAY::x"}), ("json", {"A": "ARRAY::x"}), ("plain", {"A": []}),
    ("xml", {"A": ["a|:b"]}), ("plain", {"A": ["a|:b", "c"]}),
])
def test_unrepresentable_events_are_refused(twin: ModuleType, fmt: str,
                                            headers: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        twin.serialize_event(headers, fmt)


def test_unknown_format(twin: ModuleType) -> None:
    with pytest.raises(ValueError):
        twin.serialize_event({"A": "b"}, "yaml")


def test_json_lists_survive_pipe_colon(twin: ModuleType) -> None:
    event = twin.ESLEvent({"A": ["a|:b", "c"]})
    (parsed,) = twin.Parser().feed(twin.serialize_event(event, "json"))
    assert parsed == event
