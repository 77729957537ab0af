"""Fidelity: the corpus scenario replayed against the simulator looks like FreeSWITCH.

The capture ``plain.bin`` is what a real FreeSWITCH 1.10.12 sent for the commands in
``plain.sent.bin`` (20 loopback calls: originate, uuid_broadcast, uuid_send_dtmf 1234#,
uuid_bridge, uuid_kill). The same commands, sent the same way (each phase waits for the
events the capture's client waited for), must give per channel the Event-Name sequences
of the capture, and every event type the header names of the capture.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_simulator_support import Esl

from genesis.protocol.parser import KIND_EVENT, ESLEvent, Parser
from genesis.testing import FreeSwitchSimulator


def corpus_events(path: Path) -> list[ESLEvent]:
    return [m for m in Parser().feed(path.read_bytes()) if m.kind == KIND_EVENT]


def first_name(event: ESLEvent) -> str:
    value = event["Event-Name"]
    return value[0] if isinstance(value, list) else value


def sequences(events: list[ESLEvent]) -> dict[str, tuple[str, ...]]:
    per_channel: dict[str, list[str]] = defaultdict(list)
    for event in events:
        uuid = event.get("Unique-ID")
        if isinstance(uuid, str):
            per_channel[uuid].append(first_name(event))
    return {uuid: tuple(names) for uuid, names in per_channel.items()}


def header_sets(events: list[ESLEvent]) -> dict[str, tuple[set[frozenset[str]], set[str]]]:
    """Event type -> (the variants of its non-variable header names, all its variables)."""
    out: dict[str, tuple[set[frozenset[str]], set[str]]] = defaultdict(lambda: (set(), set()))
    for event in events:
        names = set(event.keys())
        variables = {n for n in names if n.startswith("variable_")}
        variants, all_variables = out[first_name(event)]
        variants.add(frozenset(names - variables))
        all_variables |= variables
    return out


async def run_corpus_scenario(fs: FreeSwitchSimulator, sent: bytes, fmt: str) -> Esl:
    commands = [c.decode() for c in sent.split(b"\n\n") if c.strip()]
    client = await Esl.open(fs, password=None)
    await client.wait_for(lambda f: f.content_type == "auth/request", frames=True)
    phases: dict[str, list[str]] = defaultdict(list)
    for command in commands:
        phases[" ".join(command.split(" ")[:2])].append(command)
    assert (await client.send(commands[0]))["Reply-Text"] == "+OK accepted"
    assert (await client.api("version")).startswith("FreeSWITCH Version 1.10.12")
    assert (await client.send(f"event {fmt} ALL"))["Reply-Text"] == (
        f"+OK event listener enabled {fmt}"
    )
    for command in phases["bgapi originate"]:
        assert str((await client.send(command))["Reply-Text"]).startswith("+OK Job-UUID: ")
    await client.wait_for(lambda e: e.name == "BACKGROUND_JOB", count=20)
    await client.wait_for(lambda e: e.name == "CHANNEL_PARK", count=40)
    for command in phases["api uuid_broadcast"]:
        assert (await client.send(command)).body == "+OK Message sent\n"
    await client.wait_for(lambda e: e.name == "PLAYBACK_STOP", count=20)
    await client.wait_for(lambda e: first_name(e) == "COMMAND", count=20)
    for command in phases["api uuid_send_dtmf"]:
        assert " sent DTMF 1234#." in ((await client.send(command)).body or "")
    await client.wait_for(lambda e: e.name == "DTMF", count=100)
    for command in phases["api uuid_bridge"]:
        assert ((await client.send(command)).body or "").startswith("+OK ")
    await client.wait_for(lambda e: e.name == "CHANNEL_BRIDGE", count=10)
    await client.wait_for(
        lambda e: e.name == "CHANNEL_STATE" and e.get("Channel-State") == "CS_EXCHANGE_MEDIA",
        count=10,
    )
    for command in phases["api uuid_kill"]:
        assert (await client.send(command)).body == "+OK\n"
    await client.wait_for(lambda e: e.name == "CHANNEL_DESTROY", count=40)
    await client.wait_for(
        lambda e: e.name == "CHANNEL_STATE" and e.get("Channel-State") == "CS_DESTROY", count=40
    )
    await client.event("HEARTBEAT")
    assert (await client.api("status")).startswith("UP ")
    assert (await client.send("exit"))["Reply-Text"] == "+OK bye"
    await client.closed()
    return client


@pytest.fixture
async def scenario_fs() -> AsyncIterator[FreeSwitchSimulator]:
    async with FreeSwitchSimulator(heartbeat=0.2, playback_seconds=0.02) as fs:
        # The capture's client sends the second uuid_kill of a bridged pair while the
        # first kill is still tearing that channel down; FreeSWITCH takes tens of
        # milliseconds there. A wide window keeps the replay exact on a loaded machine.
        fs.teardown_seconds = 0.5
        yield fs


@pytest.mark.parametrize("fmt", ["plain", "json", "xml"])
async def test_corpus_scenario_matches_capture(
    corpus: Path, scenario_fs: FreeSwitchSimulator, fmt: str
) -> None:
    real = corpus_events(corpus / f"{fmt}.bin")
    client = await run_corpus_scenario(scenario_fs, (corpus / f"{fmt}.sent.bin").read_bytes(), fmt)
    simulated = client.events
    assert {e.content_type for e in simulated} == {f"text/event-{fmt}"}

    # Per channel: every simulated Event-Name sequence is one the real switch produced,
    # and the channels fall into the same roles in the same numbers.
    real_sequences = sequences(real)
    sim_sequences = sequences(simulated)
    assert len(sim_sequences) == len(real_sequences) == 60
    allowed = set(real_sequences.values())
    for uuid, names in sim_sequences.items():
        assert names in allowed, f"{uuid}: {names}"
    a_legs = [u for u in sim_sequences if u in {e.get("Unique-ID") for e in real}]
    assert len(a_legs) == 20  # the origination_uuid values of plain.sent.bin, honoured

    # The final frames: +OK bye, then the disconnect notice with FreeSWITCH's goodbye.
    assert client.frames[-1].content_type == "text/disconnect-notice"
    assert client.frames[-1].body == (
        "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
    )

    # Per event type: the same header names as the capture (variables: a subset).
    real_sets = header_sets(real)
    sim_sets = header_sets(simulated)
    assert set(real_sets) - set(sim_sets) <= {"RE_SCHEDULE"}
    for name, (variants, variables) in sim_sets.items():
        real_variants, real_variables = real_sets[name]
        for variant in variants:
            assert variant in real_variants, (
                name,
                sorted(variant - set().union(*real_variants)),
                sorted(min(real_variants, key=lambda v: len(v ^ variant)) - variant),
            )
        assert variables <= real_variables, (name, sorted(variables - real_variables))

    # The re-typed broadcast event carries both header sets, like the capture's.
    for source in (real, simulated):
        commands = [e for e in source if first_name(e) == "COMMAND"]
        assert len(commands) == 20
        assert {tuple(e["Event-Name"]) for e in commands} == {("COMMAND", "PRIVATE_COMMAND")}
        assert {e.name for e in commands} == {"PRIVATE_COMMAND"}

    # Event-Sequence grows across the whole switch.
    numbers = [int(e["Event-Sequence"]) for e in simulated if isinstance(e["Event-Sequence"], str)]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


async def test_event_counts_match_capture(corpus: Path, scenario_fs: FreeSwitchSimulator) -> None:
    client = await run_corpus_scenario(
        scenario_fs, (corpus / "plain.sent.bin").read_bytes(), "plain"
    )
    real = Counter(first_name(e) for e in corpus_events(corpus / "plain.bin"))
    simulated = Counter(first_name(e) for e in client.events)
    # Timing-only types (CHANNEL_STATE varies by a few in the captures themselves,
    # HEARTBEAT and RE_SCHEDULE depend on the clock) aside, the counts are exact.
    for name in set(real) | set(simulated):
        if name in {"CHANNEL_STATE", "HEARTBEAT", "RE_SCHEDULE"}:
            continue
        assert simulated[name] == real[name], name
    assert abs(simulated["CHANNEL_STATE"] - real["CHANNEL_STATE"]) <= 10
    non_events = Counter(f.content_type for f in client.frames if f.kind != KIND_EVENT)
    assert non_events == {
        "auth/request": 1,
        "command/reply": 23,
        "api/response": 72,
        "text/disconnect-notice": 1,
    }
    assert re.fullmatch(
        r"\+OK [0-9a-f-]{36}\n",
        next(e for e in client.events if e.name == "BACKGROUND_JOB").body or "",
    )


#: Headers whose values carry the state machine's meaning: they must match the capture
#: event for event (ids, times and caller names may differ).
STATE_HEADERS = (
    "Channel-State",
    "Channel-Call-State",
    "Answer-State",
    "Call-Direction",
    "Channel-HIT-Dialplan",
    "Hangup-Cause",
    "Other-Type",
    "Application",
    "Application-Response",
    "Playback-Status",
    "DTMF-Digit",
    "DTMF-Source",
    "Caller-Direction",
    "Caller-Logical-Direction",
    "Caller-Profile-Index",
)


def state_rows(events: list[ESLEvent]) -> dict[tuple[str, ...], list[list[object]]]:
    """Event-Name sequence -> per event, the STATE_HEADERS values (first channel seen)."""
    per_channel: dict[str, list[ESLEvent]] = defaultdict(list)
    for event in events:
        uuid = event.get("Unique-ID")
        if isinstance(uuid, str):
            per_channel[uuid].append(event)
    rows: dict[tuple[str, ...], list[list[object]]] = {}
    for channel_events in per_channel.values():
        names = tuple(first_name(e) for e in channel_events)
        rows.setdefault(names, [[e.get(h) for h in STATE_HEADERS] for e in channel_events])
    return rows


async def test_state_header_values_match_capture(
    corpus: Path, scenario_fs: FreeSwitchSimulator
) -> None:
    client = await run_corpus_scenario(
        scenario_fs, (corpus / "plain.sent.bin").read_bytes(), "plain"
    )
    real = state_rows(corpus_events(corpus / "plain.bin"))
    for names, rows in state_rows(client.events).items():
        for index, (ours, theirs) in enumerate(zip(rows, real[names], strict=True)):
            assert ours == theirs, (
                names[index],
                list(zip(STATE_HEADERS, ours, theirs, strict=True)),
            )
