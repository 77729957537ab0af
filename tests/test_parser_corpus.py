"""Both parser twins against real FreeSWITCH 1.10.12 traffic (../shared/corpus).

Expected numbers come from the corpus README or from a deliberately naive, independent
scan of the same bytes (``_naive_frames``), never from the parser under test.
"""

from __future__ import annotations

import collections
import functools
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CAPTURES = ("plain", "json", "xml")
FRAMES = {"plain": 1444, "json": 1442, "xml": 1445}
EVENTS = {"plain": 1347, "json": 1345, "xml": 1348}
NON_EVENTS = {"auth/request": 1, "command/reply": 23, "api/response": 72,
              "text/disconnect-notice": 1}
# From the corpus README (plain.bin, first Event-Name header); CHANNEL_STATE and
# RE_SCHEDULE vary with timing between the captures and are checked by naive scan.
PLAIN_NAMES = {
    "CHANNEL_STATE": 334, "CHANNEL_CALLSTATE": 100, "CHANNEL_EXECUTE": 100, "DTMF": 100,
    "API": 91, "CHANNEL_EXECUTE_COMPLETE": 80, "CODEC": 80, "CHANNEL_ANSWER": 40,
    "CHANNEL_CREATE": 40, "CHANNEL_DESTROY": 40, "CHANNEL_HANGUP": 40,
    "CHANNEL_HANGUP_COMPLETE": 40, "CHANNEL_PARK": 40, "CHANNEL_UNPARK": 40,
    "BACKGROUND_JOB": 20, "CALL_UPDATE": 20, "CHANNEL_ORIGINATE": 20, "CHANNEL_OUTGOING": 20,
    "CHANNEL_UUID": 20, "COMMAND": 20, "PLAYBACK_START": 20, "PLAYBACK_STOP": 20,
    "CHANNEL_BRIDGE": 10, "CHANNEL_UNBRIDGE": 10, "HEARTBEAT": 1, "RE_SCHEDULE": 1,
}


def _naive_frames(data: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a capture the simplest possible way (LF only, first value of a name wins)."""
    frames = []
    at = 0
    while at < len(data):
        while data.startswith(b"\n", at):
            at += 1
        if at >= len(data):
            break
        end = data.index(b"\n\n", at)
        head: dict[str, str] = {}
        for line in data[at:end].decode().split("\n"):
            name, _, value = line.partition(": ")
            head.setdefault(name, value)
        at = end + 2
        size = int(head.get("Content-Length", "0"))
        frames.append((head, data[at:at + size]))
        at += size
    return frames


def _naive_event_name(fmt: str, body: bytes) -> str:
    pattern = {"plain": rb"^Event-Name: ([^\n]*)$", "json": rb'"Event-Name":"([^"]*)"',
               "xml": rb"<Event-Name>([^<]*)</Event-Name>"}[fmt]
    found = re.search(pattern, body, re.M)
    assert found is not None
    return found.group(1).decode()


@functools.cache
def _bytes(path: Path) -> bytes:
    return path.read_bytes()


def _parse(twin: ModuleType, data: bytes) -> list[Any]:
    parser = twin.Parser()
    messages: list[Any] = parser.feed(data)
    assert parser.buffered == 0
    assert parser.offset == len(data)
    return messages


@pytest.mark.parametrize("fmt", CAPTURES)
def test_counts_per_content_type(twin: ModuleType, corpus: Path, fmt: str) -> None:
    messages = _parse(twin, _bytes(corpus / f"{fmt}.bin"))
    assert len(messages) == FRAMES[fmt]
    counts = collections.Counter(m.content_type for m in messages)
    assert counts == {**NON_EVENTS, f"text/event-{fmt}": EVENTS[fmt]}
    kinds = collections.Counter(m.kind for m in messages)
    assert kinds == {twin.KIND_AUTH_REQUEST: 1, twin.KIND_COMMAND_REPLY: 23,
                     twin.KIND_API_RESPONSE: 72, twin.KIND_DISCONNECT_NOTICE: 1,
                     twin.KIND_EVENT: EVENTS[fmt]}


@pytest.mark.parametrize("fmt", CAPTURES)
def test_counts_per_event_name(twin: ModuleType, corpus: Path, fmt: str) -> None:
    data = _bytes(corpus / f"{fmt}.bin")
    naive = collections.Counter(
        _naive_event_name(fmt, body) for head, body in _naive_frames(data)
        if head.get("Content-Type", "").startswith("text/event-"))
    first_names = collections.Counter()
    for message in _parse(twin, data):
        if message.kind == twin.KIND_EVENT:
            value = message["Event-Name"]
            first_names[value[0] if isinstance(value, list) else value] += 1
    assert first_names == naive
    stable = {k: v for k, v in PLAIN_NAMES.items() if k not in ("CHANNEL_STATE", "RE_SCHEDULE")}
    assert {k: first_names[k] for k in stable} == stable
    if fmt == "plain":
        assert first_names == PLAIN_NAMES


@pytest.mark.parametrize("fmt", CAPTURES)
def test_background_job_bodies(twin: ModuleType, corpus: Path, fmt: str) -> None:
    data = _bytes(corpus / f"{fmt}.bin")
    expected = []
    for head, body in _naive_frames(data):
        if head.get("Content-Type") != f"text/event-{fmt}" or b"BACKGROUND_JOB" not in body:
            continue
        if fmt == "plain":
            inner_head, _, inner_body = body.partition(b"\n\n")
            size = int(re.search(rb"\nContent-Length: (\d+)", inner_head).group(1))  # type: ignore[union-attr]
            expected.append(inner_body[:size].decode())
        elif fmt == "json":
            expected.append(json.loads(body)["_body"])
        else:
            size = int(re.search(rb"<Content-Length>(\d+)<", body).group(1))  # type: ignore[union-attr]
            expected.append(re.search(rb"<body>(.*)</body>", body, re.S).group(1)[:size].decode())  # type: ignore[union-attr]
    got = [m.body for m in _parse(twin, data) if m.name == "BACKGROUND_JOB"]
    assert len(expected) == 20
    assert got == expected
    assert all(body.startswith("+OK ") and body.endswith("\n") for body in got)


@pytest.mark.parametrize("fmt", CAPTURES)
def test_events_carry_no_framing_headers(twin: ModuleType, corpus: Path, fmt: str) -> None:
    for message in _parse(twin, _bytes(corpus / f"{fmt}.bin")):
        if message.kind == twin.KIND_EVENT:
            assert "Content-Length" not in message
            assert "Content-Type" not in message
            ipv6 = message["FreeSWITCH-IPv6"]
            assert ipv6 == ("fd00::2" if message.name != "PRIVATE_COMMAND" else ["fd00::2"] * 2)
        else:
            assert message.name is None
            assert "Content-Type" in message


def test_api_response_and_notice(twin: ModuleType, corpus: Path) -> None:
    messages = _parse(twin, _bytes(corpus / "plain.bin"))
    version = messages[2]
    assert version.kind == twin.KIND_API_RESPONSE
    assert version.body == "FreeSWITCH Version 1.10.12-release~64bit ( 64bit)\n"
    assert version["Content-Length"] == "50"
    assert messages[1]["Reply-Text"] == "+OK accepted"
    notice = messages[-1]
    assert notice.kind == twin.KIND_DISCONNECT_NOTICE
    assert notice.body == "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"


@pytest.mark.parametrize("fmt", CAPTURES)
def test_dtmf_digits_decoded(twin: ModuleType, corpus: Path, fmt: str) -> None:
    digits = [m["DTMF-Digit"] for m in _parse(twin, _bytes(corpus / f"{fmt}.bin"))
              if m.name == "DTMF"]
    assert len(digits) == 100
    assert collections.Counter(digits) == {d: 20 for d in "1234#"}


@pytest.mark.parametrize("fmt", CAPTURES)
def test_command_retyped_as_private_command(twin: ModuleType, corpus: Path, fmt: str) -> None:
    retyped = [m for m in _parse(twin, _bytes(corpus / f"{fmt}.bin"))
               if m.kind == twin.KIND_EVENT and isinstance(m["Event-Name"], list)]
    assert len(retyped) == 20
    for event in retyped:
        assert event["Event-Name"] == ["COMMAND", "PRIVATE_COMMAND"]
        assert event.name == "PRIVATE_COMMAND"
        assert isinstance(event["Core-UUID"], list)
        assert len(event["Event-Sequence"]) == 2


def test_outbound_connect_reply(twin: ModuleType, corpus: Path) -> None:
    messages = _parse(twin, _bytes(corpus / "outbound_in.bin"))
    kinds = collections.Counter(m.content_type for m in messages)
    assert kinds == {"command/reply": 7, "text/event-plain": 14, "text/disconnect-notice": 2}
    connect = messages[0]
    assert connect.kind == twin.KIND_COMMAND_REPLY
    assert connect.name is None
    assert len(connect) == 104
    assert connect["Reply-Text"] == "+OK\n"
    assert connect["Event-Name"] == "CHANNEL_DATA"
    assert connect["Socket-Mode"] == "async"
    assert connect["Control"] == "full"
    assert connect["FreeSWITCH-IPv6"] == "fd00::2"
    assert connect["variable_DP_MATCH"] == ["socket", "socket"]
    assert connect["Channel-Callee-ID-Name"] == "Outbound Call"
    # An ordinary reply is taken literally.
    assert messages[1]["Reply-Text"] == "+OK Events Enabled"
    linger, final = (m for m in messages if m.kind == twin.KIND_DISCONNECT_NOTICE)
    assert linger["Content-Disposition"] == "linger"
    assert final["Content-Disposition"] == "disconnect"


def _stable_names(events: list[Any]) -> dict[str, frozenset[str]]:
    by_name: dict[str, list[frozenset[str]]] = collections.defaultdict(list)
    for event in events:
        by_name[event.name].append(frozenset(event.keys()))
    return {name: frozenset.intersection(*sets) for name, sets in by_name.items()}


def test_three_formats_agree(twin: ModuleType, corpus: Path) -> None:
    events = {fmt: [m for m in _parse(twin, _bytes(corpus / f"{fmt}.bin"))
                    if m.kind == twin.KIND_EVENT] for fmt in CAPTURES}
    plain = _stable_names(events["plain"])
    assert _stable_names(events["json"]) == plain
    assert _stable_names(events["xml"]) == plain
    reference = next(e for e in events["plain"] if e.name == "HEARTBEAT")
    for fmt in CAPTURES:
        heartbeat = next(e for e in events[fmt] if e.name == "HEARTBEAT")
        assert list(heartbeat.keys()) == list(reference.keys())
        assert heartbeat["FreeSWITCH-IPv6"] == "fd00::2"
        # Values that do not depend on timing are equal across the three captures.
        for key in ("Core-UUID", "FreeSWITCH-Hostname", "Event-Calling-File", "Event-Info"):
            assert heartbeat[key] == reference[key]
        jobs = sorted(e["Job-Command"] for e in events[fmt] if e.name == "BACKGROUND_JOB")
        assert jobs == ["originate"] * 20
        arg = next(e for e in events[fmt] if e.name == "BACKGROUND_JOB")["Job-Command-Arg"]
        assert arg.startswith("{origination_uuid=")
        assert arg.endswith("loopback/park/default &park()")


@pytest.mark.parametrize("fmt", CAPTURES)
def test_reserialize_is_byte_exact(twin: ModuleType, corpus: Path, fmt: str) -> None:
    """Every corpus event re-serializes to FreeSWITCH's bytes, except events whose
    repeated headers are not adjacent (a mapping keeps one entry per name)."""
    data = _bytes(corpus / f"{fmt}.bin")
    frames = _naive_frames(data)
    messages = _parse(twin, data)
    exact = repeated = 0
    for (head, body), message in zip(frames, messages, strict=True):
        if message.kind != twin.KIND_EVENT:
            continue
        wire = b"Content-Length: %s\nContent-Type: %s\n\n%s" % (
            head["Content-Length"].encode(), head["Content-Type"].encode(), body)
        out = twin.serialize_event(message, fmt)
        if any(isinstance(v, list) for v in message.values()) and out != wire:
            repeated += 1
        else:
            assert out == wire
            exact += 1
        assert twin.Parser().feed(out) == [message]
    assert repeated == 100  # 40 CODEC, 40 CHANNEL_HANGUP_COMPLETE, 20 PRIVATE_COMMAND
    assert exact == EVENTS[fmt] - 100
