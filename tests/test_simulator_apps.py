"""Dialplan applications run with ``sendmsg`` (inbound, for any channel uuid)."""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from collections.abc import AsyncIterator

import pytest
from test_simulator_support import Esl

from genesis.testing import Channel, FreeSwitchSimulator


@pytest.fixture
async def client(freeswitch: FreeSwitchSimulator) -> AsyncIterator[Esl]:
    freeswitch.endpoint("user/1001", answer_after=0)
    freeswitch.endpoint("user/1002", busy=True)
    freeswitch.route("8000", apps=["park"])  # rings, parked, not answered
    esl = await Esl.open(freeswitch)
    await esl.send("event plain ALL")
    yield esl
    channels = list(freeswitch.channels.values())
    for channel in channels:
        channel.hangup()
    await asyncio.wait_for(asyncio.gather(*(c.done for c in channels)), 5)
    await esl.close()


async def execute(
    client: Esl, uuid: str, app: str, arg: str | None = None, **extra: str
) -> tuple[str, dict[str, str]]:
    """sendmsg execute; returns the Event-UUID and the reply headers."""
    event_uuid = str(uuidlib.uuid4())
    headers = {"call-command": "execute", "execute-app-name": app, "Event-UUID": event_uuid}
    if arg is not None:
        headers["execute-app-arg"] = arg
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    reply = await client.send(f"sendmsg {uuid}", headers)
    assert reply["Reply-Text"] == "+OK"
    return event_uuid, {name: str(value) for name, value in reply.items()}


async def completed(client: Esl, event_uuid: str, timeout: float = 5.0) -> dict[str, object]:
    done = await client.event(
        "CHANNEL_EXECUTE_COMPLETE", timeout=timeout, Application_UUID=event_uuid
    )
    return dict(done)


async def inbound(freeswitch: FreeSwitchSimulator, client: Esl, **kw: object) -> Channel:
    call = await freeswitch.place_call("8000", "1000", **kw)  # type: ignore[arg-type]
    await client.event("CHANNEL_PARK", Unique_ID=call.uuid)
    return call


async def test_ring_ready_pre_answer_answer(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    call = await inbound(freeswitch, client)
    assert call.answer_state == "ringing"
    for app in ("ring_ready", "pre_answer", "answer"):
        await completed(client, (await execute(client, call.uuid, app))[0])
    names = client.names(call.uuid)
    progress = names.index("CHANNEL_PROGRESS")
    media = names.index("CHANNEL_PROGRESS_MEDIA")
    answer = names.index("CHANNEL_ANSWER")
    assert progress < media < answer
    assert call.answer_state == "answered" and call.call_state == "ACTIVE"
    states = [
        e["Channel-Call-State"]
        for e in client.events
        if e.name == "CHANNEL_CALLSTATE" and e["Unique-ID"] == call.uuid
    ]
    assert states == ["RINGING", "EARLY", "ACTIVE"]


async def test_playback_duration_and_application_uuid(
    freeswitch: FreeSwitchSimulator, client: Esl
) -> None:
    freeswitch.file_durations["long.wav"] = 0.3
    call = await inbound(freeswitch, client)
    started = time.monotonic()
    event_uuid, _ = await execute(client, call.uuid, "playback", "long.wav", event_lock="true")
    done = await completed(client, event_uuid)
    assert time.monotonic() - started >= 0.3
    assert done["Application"] == "playback" and done["Application-Data"] == "long.wav"
    assert done["Application-Response"] == "FILE PLAYED"
    assert done["variable_playback_ms"] == "300"
    execute_event = await client.event("CHANNEL_EXECUTE", Application_UUID=event_uuid)
    assert execute_event["Application"] == "playback"
    stop = await client.event("PLAYBACK_STOP", Unique_ID=call.uuid)
    assert stop["Playback-Status"] == "done"


async def test_event_lock_runs_in_order(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    call = await inbound(freeswitch, client)
    first, _ = await execute(client, call.uuid, "sleep", "100", event_lock="true")
    second, _ = await execute(client, call.uuid, "set", "after=1", event_lock="true")
    await completed(client, second)
    order = [
        (e.name, e.get("Application-UUID"))
        for e in client.events
        if e.name in ("CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE")
        and e.get("Application-UUID") in (first, second)
    ]
    assert order == [
        ("CHANNEL_EXECUTE", first),
        ("CHANNEL_EXECUTE_COMPLETE", first),
        ("CHANNEL_EXECUTE", second),
        ("CHANNEL_EXECUTE_COMPLETE", second),
    ]
    assert call.variables["after"] == "1"


async def test_hangup_app_and_sendmsg_hangup(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    call = await inbound(freeswitch, client)
    event_uuid, _ = await execute(client, call.uuid, "hangup", "USER_BUSY")
    await completed(client, event_uuid)
    await client.event("CHANNEL_DESTROY", Unique_ID=call.uuid)
    names = client.names(call.uuid)
    tail = names[names.index("CHANNEL_HANGUP") - 1 :]
    assert tail[:3] == ["CHANNEL_EXECUTE", "CHANNEL_HANGUP", "CHANNEL_EXECUTE_COMPLETE"]
    assert call.hangup_cause == "USER_BUSY"
    other = await inbound(freeswitch, client)
    reply = await client.send(
        f"sendmsg {other.uuid}", {"call-command": "hangup", "hangup-cause": "CALL_REJECTED"}
    )
    assert reply["Reply-Text"] == "+OK"
    await asyncio.wait_for(other.done, 5)
    assert other.hangup_cause == "CALL_REJECTED"


async def test_bridge_and_export(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    freeswitch.endpoint("user/1005", answer_after=0.05, hangup_after=0.2)
    call = await inbound(freeswitch, client)
    await execute(client, call.uuid, "answer")
    await execute(client, call.uuid, "export", "shared=yes")
    bridge_uuid, _ = await execute(client, call.uuid, "bridge", "user/1005")
    after, _ = await execute(client, call.uuid, "set", "continued=true")
    bridge = await client.event("CHANNEL_BRIDGE", Unique_ID=call.uuid)
    callee = bridge["Bridge-B-Unique-ID"]
    assert bridge["Bridge-A-Unique-ID"] == call.uuid
    assert bridge["Other-Leg-Unique-ID"] == callee
    await client.event("CHANNEL_UNBRIDGE", Unique_ID=call.uuid)
    await completed(client, bridge_uuid)
    await completed(client, after)  # the caller continues after the far end hung up
    create = await client.event("CHANNEL_CREATE", Unique_ID=str(callee))
    assert create["variable_shared"] == "yes"
    assert call.variables["last_bridge_to"] == callee
    assert not call.hungup


async def test_bridge_failure(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    call = await inbound(freeswitch, client)
    event_uuid, _ = await execute(client, call.uuid, "bridge", "user/1002")
    done = await completed(client, event_uuid)
    assert done["Application-Response"] == "USER_BUSY"
    assert done["variable_originate_disposition"] == "USER_BUSY"


async def test_play_and_get_digits_scripted(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    call = await inbound(freeswitch, client, digits="42#", digit_interval=0.01)
    await execute(client, call.uuid, "answer")
    event_uuid, _ = await execute(
        client,
        call.uuid,
        "play_and_get_digits",
        "1 3 2 2000 # menu.wav invalid.wav choice \\d+",
    )
    await completed(client, event_uuid)
    assert call.variables["choice"] == "42"
    assert call.dtmf_received == ["4", "2", "#"]


async def test_play_and_get_digits_via_uuid_send_dtmf(
    freeswitch: FreeSwitchSimulator, client: Esl
) -> None:
    call = await inbound(freeswitch, client)
    event_uuid, _ = await execute(
        client, call.uuid, "play_and_get_digits", "2 2 1 2000 # menu.wav silence_stream://250 pin"
    )
    await client.event("PLAYBACK_START", Unique_ID=call.uuid)
    await client.api(f"uuid_send_dtmf {call.uuid} 77")
    await completed(client, event_uuid)
    assert call.variables["pin"] == "77"


async def test_play_and_get_digits_failure(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    freeswitch.playback_seconds = 0.01
    call = await inbound(freeswitch, client)
    event_uuid, _ = await execute(
        client, call.uuid, "play_and_get_digits", "1 1 2 50 # menu.wav bad.wav choice"
    )
    await completed(client, event_uuid)
    assert "choice" not in call.variables and call.variables["read_result"] == "failure"
    prompts = [
        e["Playback-File-Path"]
        for e in client.events
        if e.name == "PLAYBACK_START" and e["Unique-ID"] == call.uuid
    ]
    assert prompts == ["menu.wav", "bad.wav", "menu.wav", "bad.wav"]


async def test_say_log_sleep_set_echo(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    call = await inbound(freeswitch, client)
    await client.send("log debug")
    say, _ = await execute(client, call.uuid, "say", "en number pronounced 42")
    log, _ = await execute(client, call.uuid, "log", "NOTICE hello")
    started = time.monotonic()
    sleep, _ = await execute(client, call.uuid, "sleep", "150")
    await completed(client, say)
    await completed(client, log)
    await completed(client, sleep)
    assert time.monotonic() - started >= 0.15
    logs = await client.wait_for(lambda f: f.content_type == "log/data", frames=True)
    assert logs[0]["Log-Level"] == "5" and (logs[0].body or "").endswith("hello\n")
    setter, _ = await execute(client, call.uuid, "set", "a=b")
    await completed(client, setter)
    assert call.variables["a"] == "b"
    echo, _ = await execute(client, call.uuid, "echo")
    await client.event("CHANNEL_EXECUTE", Application_UUID=echo)
    await asyncio.sleep(0.1)
    assert not any(
        e.get("Application-UUID") == echo
        for e in client.events
        if e.name == "CHANNEL_EXECUTE_COMPLETE"
    )
    call.hangup()
    await completed(client, echo)


async def test_long_argument_in_body_and_loops(
    freeswitch: FreeSwitchSimulator, client: Esl
) -> None:
    freeswitch.playback_seconds = 0.01
    call = await inbound(freeswitch, client)
    event_uuid = str(uuidlib.uuid4())
    path = "x" * 3000 + ".wav"
    reply = await client.send(
        f"sendmsg {call.uuid}",
        {
            "call-command": "execute",
            "execute-app-name": "playback",
            "loops": "2",
            "Event-UUID": event_uuid,
            "content-type": "text/plain",
        },
        body=path,
    )
    assert reply["Reply-Text"] == "+OK"
    await client.wait_for(
        lambda e: e.name == "CHANNEL_EXECUTE_COMPLETE" and e.get("Application-UUID") == event_uuid,
        count=2,
    )
    stops = [e for e in client.events if e.name == "PLAYBACK_STOP"]
    assert [s["Playback-File-Path"] for s in stops] == [path, path]


async def test_unknown_application_hangs_up(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    call = await inbound(freeswitch, client)
    await execute(client, call.uuid, "no_such_app")
    await asyncio.wait_for(call.done, 5)
    assert call.hangup_cause == "DESTINATION_OUT_OF_ORDER"


async def test_custom_application(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    async def shout(channel: Channel, arg: str, message: object) -> str:
        channel.variables["shouted"] = arg.upper()
        return "LOUD"

    freeswitch.applications["shout"] = shout
    call = await inbound(freeswitch, client)
    done = await completed(client, (await execute(client, call.uuid, "shout", "hi"))[0])
    assert done["Application-Response"] == "LOUD" and call.variables["shouted"] == "HI"
