"""API commands of the simulator over TCP: originate outcomes and the uuid_* family."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator

import pytest
from test_simulator_support import Esl

from genesis.testing import FreeSwitchSimulator

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
async def client(freeswitch: FreeSwitchSimulator) -> AsyncIterator[Esl]:
    freeswitch.endpoint("user/1001", answer_after=0.05)
    freeswitch.endpoint("user/1002", busy=True)
    freeswitch.endpoint("user/1003", ring_forever=True)
    freeswitch.endpoint("user/1004", fail="CALL_REJECTED")
    esl = await Esl.open(freeswitch)
    await esl.send("event plain ALL")
    yield esl
    channels = list(freeswitch.channels.values())
    for channel in channels:
        channel.hangup()
    await asyncio.wait_for(asyncio.gather(*(c.done for c in channels)), 5)
    await esl.close()


async def test_status_uptime_version_create_uuid(client: Esl) -> None:
    status = await client.api("status")
    assert re.match(r"UP 0 years, 0 days, 0 hours, 0 minutes, \d+ seconds", status)
    assert "FreeSWITCH (Version 1.10.12-release  64bit) is ready\n" in status
    assert int(await client.api("uptime")) >= 0
    assert await client.api("version") == "FreeSWITCH Version 1.10.12-release~64bit ( 64bit)\n"
    first, second = await client.api("create_uuid"), await client.api("create_uuid")
    assert re.fullmatch(UUID, first) and first != second
    api = await client.event("API", API_Command="status")
    assert "API-Command-Argument" not in api


async def test_originate_answer(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    started = time.monotonic()
    reply = await client.api("originate user/1001 &park()")
    assert time.monotonic() - started >= 0.05  # blocking api: the ring time
    uuid = re.fullmatch(rf"\+OK ({UUID})\n", reply).group(1)  # type: ignore[union-attr]
    await client.event("CHANNEL_PARK", Unique_ID=uuid)
    assert client.names(uuid) == [
        "CHANNEL_OUTGOING",
        "CHANNEL_STATE",
        "CHANNEL_CREATE",
        "CHANNEL_ORIGINATE",
        "CHANNEL_STATE",
        "CHANNEL_STATE",
        "CHANNEL_PROGRESS",
        "CHANNEL_CALLSTATE",
        "CHANNEL_ANSWER",
        "CHANNEL_CALLSTATE",
        "CHANNEL_STATE",
        "CHANNEL_EXECUTE",
        "CHANNEL_PARK",
    ]
    assert freeswitch.channels[uuid].answer_state == "answered"
    assert await client.api(f"uuid_exists {uuid}") == "true"


@pytest.mark.parametrize(
    ("dial", "cause"),
    [
        ("user/1002", "USER_BUSY"),
        ("user/1004", "CALL_REJECTED"),
        ("{originate_timeout=1}user/1003", "NO_ANSWER"),
        ("user/1999", "USER_NOT_REGISTERED"),
        ("error/NORMAL_TEMPORARY_FAILURE", "NORMAL_TEMPORARY_FAILURE"),
    ],
)
async def test_originate_failures(client: Esl, dial: str, cause: str) -> None:
    assert await client.api(f"originate {dial} &park()", timeout=5) == f"-ERR {cause}\n"


async def test_originate_failure_events(client: Esl) -> None:
    await client.api(
        "originate {origination_uuid=aaaaaaaa-0000-0000-0000-000000000001}user/1002 &park()"
    )
    uuid = "aaaaaaaa-0000-0000-0000-000000000001"
    await client.event("CHANNEL_DESTROY", Unique_ID=uuid)
    hangup = await client.event("CHANNEL_HANGUP_COMPLETE", Unique_ID=uuid)
    # FreeSWITCH writes Hangup-Cause twice on this event (event header + channel data).
    assert hangup["Hangup-Cause"] == ["USER_BUSY", "USER_BUSY"]
    assert hangup["variable_hangup_cause_q850"] == "17"
    names = client.names(uuid)
    assert names[names.index("CHANNEL_HANGUP") :] == [
        "CHANNEL_HANGUP",
        "CHANNEL_STATE",
        "CHANNEL_CALLSTATE",
        "CHANNEL_STATE",
        "CHANNEL_HANGUP_COMPLETE",
        "CHANNEL_DESTROY",
        "CHANNEL_STATE",
    ]


async def test_originate_variables_and_app_args(
    freeswitch: FreeSwitchSimulator, client: Esl
) -> None:
    uuid = "bbbbbbbb-0000-0000-0000-000000000002"
    reply = await client.api(
        f"originate {{origination_uuid={uuid},origination_caller_id_number=4242,my_var=x}}"
        "user/1001 &playback(ivr/welcome.wav)"
    )
    assert reply == f"+OK {uuid}\n"
    stop = await client.event("PLAYBACK_STOP", Unique_ID=uuid)
    assert stop["Playback-File-Path"] == "ivr/welcome.wav"
    assert stop["variable_my_var"] == "x"
    assert stop["Caller-Caller-ID-Number"] == "4242"
    # The dialplan ran out after the playback: FreeSWITCH hangs up.
    done = await client.event("CHANNEL_HANGUP_COMPLETE", Unique_ID=uuid)
    assert done["Hangup-Cause"] == ["NORMAL_CLEARING", "NORMAL_CLEARING"]


async def test_originate_to_extension(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    freeswitch.route("7000", apps=["answer", "set reached=7000", "park"])
    uuid = (await client.api("originate user/1001 7000 XML default")).split()[1]
    park = await client.event("CHANNEL_PARK", Unique_ID=uuid)
    assert park["variable_reached"] == "7000"
    uuid = (await client.api("originate user/1001 7777")).split()[1]
    hangup = await client.event("CHANNEL_HANGUP", Unique_ID=uuid)
    assert hangup["Hangup-Cause"] == "NO_ROUTE_DESTINATION"


async def test_bgapi_originate_and_client_job_uuid(client: Esl) -> None:
    job = "cccccccc-0000-0000-0000-000000000003"
    reply = await client.send("bgapi originate user/1001 &park()", {"Job-UUID": job})
    assert reply["Reply-Text"] == f"+OK Job-UUID: {job}"
    result = await client.event("BACKGROUND_JOB", Job_UUID=job)
    assert re.fullmatch(rf"\+OK {UUID}\n", result.body or "")
    assert result["Job-Command"] == "originate"
    assert result["Job-Command-Arg"] == "user/1001 &park()"
    await client.send("bgapi originate user/1002 &park()")
    failed = await client.wait_for(lambda e: e.name == "BACKGROUND_JOB", count=2)
    assert failed[1].body == "-ERR USER_BUSY\n"


async def test_uuid_kill_getvar_setvar_dump(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    uuid = (await client.api("originate user/1001 &park()")).split()[1]
    assert await client.api(f"uuid_setvar {uuid} color blue") == "+OK\n"
    assert await client.api(f"uuid_getvar {uuid} color") == "blue"
    assert await client.api(f"uuid_getvar {uuid} nothing") == "_undef_"
    dump = await client.api(f"uuid_dump {uuid}")
    assert f"Unique-ID: {uuid}\n" in dump and "variable_color: blue\n" in dump
    assert await client.api(f"uuid_kill {uuid} CALL_REJECTED") == "+OK\n"
    hangup = await client.event("CHANNEL_HANGUP", Unique_ID=uuid)
    assert hangup["Hangup-Cause"] == "CALL_REJECTED"
    await client.event("CHANNEL_DESTROY", Unique_ID=uuid)
    assert await client.api(f"uuid_kill {uuid}") == "-ERR No such channel!\n"
    assert await client.api(f"uuid_exists {uuid}") == "false"
    assert await client.api(f"uuid_getvar {uuid} color") == "-ERR No such channel!\n"


async def test_uuid_bridge_and_broadcast(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    a = (await client.api("originate user/1001 &park()")).split()[1]
    b = (await client.api("originate user/1001 &park()")).split()[1]
    assert await client.api(f"uuid_bridge {a} {b}") == f"+OK {b}\n"
    bridge = await client.event("CHANNEL_BRIDGE")
    assert bridge["Bridge-A-Unique-ID"] == a and bridge["Bridge-B-Unique-ID"] == b
    assert bridge["Other-Leg-Unique-ID"] == b
    assert await client.api(f"uuid_broadcast {b} tone.wav aleg") == "+OK Message sent\n"
    await client.event("PLAYBACK_STOP", Unique_ID=b)
    command = await client.event("PRIVATE_COMMAND", Unique_ID=b)
    assert command["Event-Name"] == ["COMMAND", "PRIVATE_COMMAND"]
    assert command["execute-app-arg"] == "tone.wav"
    calls = json.loads(await client.api("show calls as json"))
    assert calls["row_count"] == 1 and {calls["rows"][0]["uuid"], calls["rows"][0]["b_uuid"]} == {
        a,
        b,
    }
    await client.api(f"uuid_kill {b}")
    await client.event("CHANNEL_UNBRIDGE", Unique_ID=a)
    await client.event("CHANNEL_DESTROY", Unique_ID=a)
    assert await client.api(f"uuid_bridge {a} {b}") == f"-ERR Invalid uuid {a}\n"


async def test_uuid_send_dtmf(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    uuid = (await client.api("originate user/1001 &park()")).split()[1]
    assert await client.api(f"uuid_send_dtmf {uuid} 12#") == f"+OK {uuid} sent DTMF 12#.\n"
    digits = await client.wait_for(lambda e: e.name == "DTMF", count=3)
    assert [d["DTMF-Digit"] for d in digits] == ["1", "2", "#"]
    assert b"DTMF-Digit: %23\n" in client.raw  # URL-encoded on the wire, like FreeSWITCH
    assert freeswitch.channels[uuid].dtmf_received == ["1", "2", "#"]


async def test_show_channels_and_hupall(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    assert json.loads(await client.api("show channels as json")) == {"row_count": 0}
    empty = await client.api("show channels")
    assert empty.startswith("uuid,direction,created,") and empty.endswith("\n\n0 total.\n")
    for _ in range(2):
        await client.api("originate user/1001 &park()")
    text = await client.api("show channels")
    assert text.endswith("\n\n2 total.\n") and text.count("sofia/internal/1001@") == 2
    rows = json.loads(await client.api("show channels as json"))["rows"]
    assert {row["state"] for row in rows} == {"CS_EXECUTE"}
    assert {row["application"] for row in rows} == {"park"}
    plain_calls = await client.api("show calls")
    assert plain_calls.endswith("\n\n2 total.\n")
    reply = await client.api("hupall MANAGER_REQUEST")
    assert reply == "+OK hangup all channels with cause MANAGER_REQUEST\n"
    await client.wait_for(lambda e: e.name == "CHANNEL_DESTROY", count=2)
    assert json.loads(await client.api("show channels as json")) == {"row_count": 0}


async def test_global_getvar(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    assert await client.api("global_getvar core_uuid") == freeswitch.identity.core_uuid
    assert await client.api("global_getvar nope") == ""
    assert "hostname=" in await client.api("global_getvar")


async def test_registered_api(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    async def reverse(fs: FreeSwitchSimulator, args: str) -> str:
        return args[::-1]

    freeswitch.apis.register("reverse", reverse)
    assert await client.api("reverse abc") == "cba"


async def test_originate_simultaneous_first_answer_wins(
    freeswitch: FreeSwitchSimulator, client: Esl
) -> None:
    freeswitch.endpoint("user/2001", answer_after=0.3)
    freeswitch.endpoint("user/2002", answer_after=0.05)
    reply = await client.api("originate {originate_timeout=5}user/2001,user/2002,user/1002 &park()")
    uuid = reply.split()[1]
    winner = freeswitch.channels[uuid]
    assert winner.name.startswith("sofia/internal/2002@")
    loser = await client.event("CHANNEL_HANGUP", Hangup_Cause="LOSE_RACE")
    assert loser["Caller-Destination-Number"] == "2001"
    busy = await client.event("CHANNEL_HANGUP", Hangup_Cause="USER_BUSY")
    assert busy["Caller-Destination-Number"] == "1002"


async def test_originate_sequential_and_all_failing(client: Esl) -> None:
    reply = await client.api("originate user/1002|user/1004|user/1001 &park()")
    assert reply.startswith("+OK ")
    causes = [e["Hangup-Cause"] for e in client.events if e.name == "CHANNEL_HANGUP"]
    assert causes == ["USER_BUSY", "CALL_REJECTED"]
    assert await client.api("originate user/1002,user/1004 &park()") == "-ERR CALL_REJECTED\n"


async def test_return_ring_ready(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    """With return_ring_ready originate answers at the first ring; the leg runs its
    application while still ringing and answers later."""
    freeswitch.endpoint("user/3001", answer_after=0.3)
    started = time.monotonic()
    reply = await client.api("originate {return_ring_ready=true}user/3001 &park()")
    assert time.monotonic() - started < 0.3
    uuid = reply.split()[1]
    assert freeswitch.channels[uuid].answer_state == "ringing"
    await client.event("CHANNEL_PARK", Unique_ID=uuid)
    await client.event("CHANNEL_ANSWER", Unique_ID=uuid)


async def test_failing_api_and_application_are_reported(
    freeswitch: FreeSwitchSimulator, client: Esl, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(fs: FreeSwitchSimulator, args: str) -> str:
        raise RuntimeError("boom")

    freeswitch.apis.register("broken", broken)
    assert await client.api("broken now") == "-ERR broken: boom\n"
    with pytest.raises(ValueError, match="host:port"):
        freeswitch.route("6000", socket="127.0.0.1:notaport async full")
    freeswitch.route("6000", apps=[("socket", "127.0.0.1:notaport async full")])
    call = await freeswitch.place_call("6000")
    await asyncio.wait_for(call.done, 5)
    assert call.hangup_cause == "NORMAL_TEMPORARY_FAILURE"
    assert freeswitch.stats["application_errors"] == 1
    assert "api broken failed" in caplog.text and "application failed" in caplog.text


def test_endpoint_declarations_are_checked() -> None:
    fs = FreeSwitchSimulator()
    with pytest.raises(ValueError, match="pick one"):
        fs.endpoint("user/1", busy=True, fail="CALL_REJECTED")
    with pytest.raises(ValueError, match="negative"):
        fs.endpoint("user/1", answer_after=-1)
    assert fs.endpoint("user/1", fail="call_rejected").fail == "CALL_REJECTED"


async def test_endpoint_patterns(freeswitch: FreeSwitchSimulator, client: Esl) -> None:
    freeswitch.endpoint(r"^user/2\d{3}$", answer_after=0)
    freeswitch.endpoint(r"^user/29\d\d$", busy=True)
    assert (await client.api("originate user/2001 &park()")).startswith("+OK ")
    assert await client.api("originate user/2901 &park()") == "-ERR USER_BUSY\n"
    assert await client.api("originate user/3001 &park()") == "-ERR USER_NOT_REGISTERED\n"


async def test_return_ring_ready_ends_the_originate_timeout(
    freeswitch: FreeSwitchSimulator, client: Esl
) -> None:
    """FreeSWITCH stops applying originate_timeout once return_ring_ready returned."""
    reply = await client.api(
        "originate {return_ring_ready=true,originate_timeout=1}user/1003 &park()"
    )
    uuid = reply.split()[1]
    await asyncio.sleep(1.2)
    assert freeswitch.channels[uuid].answer_state == "ringing"
    assert "CHANNEL_HANGUP" not in client.names(uuid)


async def test_silent_endpoint_with_return_ring_ready(
    freeswitch: FreeSwitchSimulator, client: Esl
) -> None:
    """No ringing signalled: return_ring_ready waits, and the originate timeout applies."""
    freeswitch.endpoint("user/3002", ring_forever=True, ringing=False)
    reply = await client.api(
        "originate {return_ring_ready=true,originate_timeout=1}user/3002 &park()", timeout=5
    )
    assert reply == "-ERR NO_ANSWER\n"
    assert "CHANNEL_PROGRESS" not in [e.name for e in client.events]
