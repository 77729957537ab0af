"""Property tests of both twins: chunking, hostile bytes, bounded memory, round trips."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genesis.exceptions import ProtocolError
from tests.conftest import _load_twin

CAPTURES = ("plain.bin", "json.bin", "xml.bin", "outbound_in.bin")
# Corpus files are megabytes: a few examples each keep the suite fast on two cores.
BOUNDED = settings(max_examples=25, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])


@functools.cache
def _capture(path: Path) -> bytes:
    return path.read_bytes()


def _summary(messages: list[Any]) -> list[tuple[Any, ...]]:
    return [(m.kind, m.content_type, dict(m), m.raw_body) for m in messages]


@functools.cache
def _reference(twin_name: str, path: Path) -> list[tuple[Any, ...]]:
    twin = importlib.import_module(twin_name)
    return _summary(twin.Parser().feed(_capture(path)))


@pytest.mark.parametrize("capture", CAPTURES)
@BOUNDED
@given(data=st.data())
def test_any_chunking_gives_the_same_messages(twin: ModuleType, corpus: Path, capture: str,
                                              data: st.DataObject) -> None:
    stream = _capture(corpus / capture)
    if capture != "outbound_in.bin":
        stream = stream[:200_000]  # whole frames and a cut one: enough to exercise every path
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=60)))
    sizes = data.draw(st.sampled_from([1, 7, 1000, 65536]))
    # Sharing the fed chunks, as the engine does: the messages are read after release().
    share = data.draw(st.booleans())
    parser = twin.Parser(share=share)
    got: list[Any] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        piece = stream[start:cut]
        for at in range(0, len(piece), sizes * 50 if sizes == 1 else sizes):
            out = parser.feed(piece[at:at + (sizes * 50 if sizes == 1 else sizes)])
            got += out
            if share:
                parser.release(out)
        start = cut
    whole = twin.Parser()
    expected = whole.feed(stream)
    assert _summary(got) == _summary(expected)
    assert parser.buffered == whole.buffered
    assert parser.offset == whole.offset


@pytest.mark.parametrize("capture", CAPTURES)
def test_byte_by_byte_small_capture(twin: ModuleType, corpus: Path, capture: str) -> None:
    stream = _capture(corpus / capture)[:30_000]
    parser = twin.Parser()
    got: list[Any] = []
    for i in range(len(stream)):
        got += parser.feed(stream[i:i + 1])
    assert _summary(got) == _summary(twin.Parser().feed(stream))


def _read_all(twin: ModuleType, messages: list[Any]) -> None:
    """Read every message whole: decoding never raises, but a plain event's bad line may.

    A plain event's lines are checked by the first read that indexes them, not by
    feed() (docs/architecture.md), so that read may raise ProtocolError instead.
    """
    for message in messages:
        _ = message.body
        try:
            dict(message)
        except ProtocolError as error:
            assert message.kind == twin.KIND_EVENT and "without ':'" in error.reason
            assert isinstance(error.offset, int) and error.offset >= 0
            assert isinstance(error.excerpt, bytes) and len(error.excerpt) <= 64
            with pytest.raises(ProtocolError):
                len(message)


def _feed_all(twin: ModuleType, chunks: list[bytes], max_header: int, max_body: int) -> None:
    parser = twin.Parser(max_header_size=max_header, max_body_size=max_body)
    for chunk in chunks:
        try:
            _read_all(twin, parser.feed(chunk))
        except ProtocolError as error:
            assert isinstance(error.offset, int) and error.offset >= 0
            assert isinstance(error.excerpt, bytes) and len(error.excerpt) <= 64
            with pytest.raises(ProtocolError):
                parser.feed(b"Content-Type: command/reply\n\n")
            return
        # Memory stays bounded: at most one header block, one body and one chunk.
        assert parser.buffered <= max_header + max_body + len(chunk) + 64


_FRAMEISH = st.lists(st.sampled_from([
    b"Content-Type: ", b"Content-Length: ", b"text/event-plain", b"text/event-json",
    b"text/event-xml", b"command/reply", b"api/response", b"\n", b"\r\n", b"\n\n", b":", b" ",
    b"5", b"12", b"-1", b"%", b"%2", b"%41", b"ARRAY::", b"|:", b"\xff", b"\xc3", b"{", b"}",
    b'"a":"b"', b"<event>", b"<headers>", b"</headers>", b"</event>", b"<a>b</a>", b"Event-Name",
]), max_size=80).map(b"".join)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.one_of(st.binary(max_size=2000), _FRAMEISH),
       cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_random_bytes_give_messages_or_protocol_error(twin: ModuleType, stream: bytes,
                                                      cuts: list[int]) -> None:
    bounds = sorted({c for c in cuts if c < len(stream)})
    chunks = [stream[a:b] for a, b in zip([0, *bounds], [*bounds, len(stream)], strict=True)]
    _feed_all(twin, chunks, max_header=256, max_body=512)


def _mutated(data: st.DataObject, capture: bytes) -> bytes:
    """``capture`` with 1 to 20 bytes flipped, runs deleted, or framing bytes inserted."""
    stream = bytearray(capture)
    for _ in range(data.draw(st.integers(1, 20))):
        at = data.draw(st.integers(0, len(stream) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if action == "flip":
            stream[at] = data.draw(st.integers(0, 255))
        elif action == "delete":
            del stream[at:at + data.draw(st.integers(1, 50))]
        else:
            stream[at:at] = data.draw(st.sampled_from(
                [b"\n", b"\r", b"\n\n", b":", b"%", b"\xff", b"9", b"<", b"/", b'"', b"{"]))
    return bytes(stream)


@BOUNDED
@given(data=st.data())
def test_mutated_corpus_gives_messages_or_protocol_error(twin: ModuleType, corpus: Path,
                                                         data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(CAPTURES))
    stream = _mutated(data, _capture(corpus / name)[:60_000])
    chunk = data.draw(st.integers(1, 5000))
    chunks = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
    parser = twin.Parser(max_header_size=8192, max_body_size=16384)
    for piece in chunks:
        try:
            messages = parser.feed(piece)
        except ProtocolError:
            break
        _read_all(twin, messages)
        assert parser.buffered <= 8192 + 16384 + len(piece) + 64


def _outcome(twin: ModuleType, stream: bytes) -> list[Any]:
    """Every message of ``stream`` read whole (names in order), then the refusal that
    ended the stream, if any."""
    outcome: list[Any] = []
    try:
        messages = twin.Parser().feed(stream)
    except ProtocolError as exc:
        messages, refusal = exc.messages, (exc.reason, exc.offset, exc.excerpt)
    else:
        refusal = None
    for message in messages:
        try:
            outcome.append((message.kind, message.content_type, dict(message),
                            list(message.keys()), message.raw_body))
        except ProtocolError as exc:  # a plain event's bad line, found when read
            outcome.append((exc.reason, exc.offset, exc.excerpt))
    return [*outcome, refusal]


@BOUNDED
@given(data=st.data())
def test_twins_agree_on_mutated_corpus(corpus: Path, data: st.DataObject) -> None:
    compiled = _load_twin("compiled")
    name = data.draw(st.sampled_from(CAPTURES))
    capture = _capture(corpus / name)
    start = capture.find(b"Content-", data.draw(st.integers(0, len(capture) - 30_000)))
    stream = _mutated(data, capture[start:start + 30_000])
    assert _outcome(compiled, stream) == _outcome(_load_twin("python"), stream)


def test_huge_header_block_in_tiny_chunks_stays_bounded(twin: ModuleType) -> None:
    parser = twin.Parser(max_header_size=4096)
    with pytest.raises(ProtocolError):
        for _ in range(10_000):
            parser.feed(b"X: 0123456789\n"[:5])
            assert parser.buffered <= 4096 + 5


_NAME_CHARS = st.characters(codec="utf-8", exclude_characters=":\r\n<>/&",
                            exclude_categories=["Zs", "Cc", "Cs", "Zl", "Zp"])
_NAMES = st.text(_NAME_CHARS, min_size=1, max_size=20).filter(
    lambda n: n not in ("Content-Length", "_body") and not any(c.isspace() for c in n))
_VALUE_CHARS = st.characters(codec="utf-8", exclude_categories=["Cs"])
_VALUES = st.one_of(
    st.text(_VALUE_CHARS, max_size=30),
    st.sampled_from(["", "%", "%41", "100%", "a:b", "line1\nline2", "+OK\n", "ü€𝄞", "|",
                     "_undef_"]),
).filter(lambda v: not v.startswith("ARRAY::"))
_LIST_ITEMS = _VALUES.filter(lambda v: "|:" not in v)
_HEADERS = st.lists(st.tuples(_NAMES, st.one_of(_VALUES, st.lists(_LIST_ITEMS, min_size=1,
                                                                     max_size=4))),
                    max_size=12, unique_by=lambda pair: pair[0])
_BODIES = st.one_of(st.none(), st.binary(max_size=200),
                    st.text(_VALUE_CHARS, max_size=60).map(lambda t: t.encode()))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=_HEADERS, body=_BODIES, fmt=st.sampled_from(["plain", "json", "xml"]))
def test_serializer_round_trip(twin: ModuleType, headers: list[tuple[str, Any]],
                               body: bytes | None, fmt: str) -> None:
    event = twin.ESLEvent(headers, body=body)
    wire = twin.serialize_event(event, fmt)
    (parsed,) = twin.Parser().feed(wire)
    assert parsed == event
    assert parsed.raw_body == body
    assert parsed.content_type == f"text/event-{fmt}"
    assert list(parsed.keys()) == [name for name, _ in headers]


# Lines that the compiled twin's line cache and its guess of the next line must tell
# apart: one line the start of another, the same value escaped or not, a line ending
# in CR, the longest cached line and the first one too long, bad escapes and bytes.
_POOL = [b"Event-Name: A", b"Event-Name: B", b"X: 1", b"X: 12", b"X: 1%32", b"X:", b"X: ",
         b"Y: v\r", b"Y: v", b"Z: ARRAY%3A%3Aa%7C%3Ab", b"W: %E2%82%AC", b"W: %ZZ",
         b"W: \xff", b"L: " + b"q" * 92, b"L: " + b"q" * 93, b"L: " + b"q" * 94,
         b"no colon"]
_BLOCKS = st.lists(st.lists(st.tuples(st.sampled_from(_POOL), st.sampled_from([b"\n", b"\r\n"])),
                            max_size=8), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(blocks=_BLOCKS)
def test_twins_list_lines_alike(blocks: list[list[tuple[bytes, bytes]]]) -> None:
    compiled = _load_twin("compiled")
    stream = b""
    for block in blocks:
        inner = b"".join(line + end for line, end in block) + b"\n"
        stream += b"Content-Length: %d\nContent-Type: text/event-plain\n\n%s" % (len(inner), inner)
    ours = _outcome(compiled, stream)
    assert ours == _outcome(_load_twin("python"), stream)
    # Twice: the second time every line is in the caches.
    assert ours == _outcome(compiled, stream)
