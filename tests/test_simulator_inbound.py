"""The simulator's inbound Event Socket: authentication, subscriptions, filters, commands."""

from __future__ import annotations

import asyncio
import json

import pytest
from test_simulator_support import Esl

from genesis.testing import FreeSwitchSimulator
from tests.polling import until

GOODBYE = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
COMMON = [
    "Event-Name",
    "Core-UUID",
    "FreeSWITCH-Hostname",
    "FreeSWITCH-Switchname",
    "FreeSWITCH-IPv4",
    "FreeSWITCH-IPv6",
    "Event-Date-Local",
    "Event-Date-GMT",
    "Event-Date-Timestamp",
    "Event-Calling-File",
    "Event-Calling-Function",
    "Event-Calling-Line-Number",
    "Event-Sequence",
]


async def test_auth_accepted_then_api(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    assert client.frames[0].content_type == "auth/request"
    assert client.raw.startswith(b"Content-Type: auth/request\n\nContent-Type: command/reply\n")
    assert await client.api("version") == "FreeSWITCH Version 1.10.12-release~64bit ( 64bit)\n"
    await client.close()


async def test_wrong_password_is_refused_with_notice_and_close(
    freeswitch: FreeSwitchSimulator,
) -> None:
    client = await Esl.open(freeswitch, password=None)
    await client.wait_for(lambda f: f.content_type == "auth/request", frames=True)
    reply = await client.send("auth nope")
    assert reply["Reply-Text"] == "-ERR invalid"
    await client.closed()
    notice = client.frames[-1]
    assert notice.content_type == "text/disconnect-notice"
    assert notice.body == GOODBYE
    assert freeswitch.stats["auth_failures"] == 1


async def test_commands_before_auth_are_not_found(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch, password=None)
    assert (await client.send("api status"))["Reply-Text"] == "-ERR command not found"
    assert (await client.send("auth ClueCon"))["Reply-Text"] == "+OK accepted"
    await client.close()


async def test_userauth(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch, password=None)
    reply = await client.send("userauth admin@default:ClueCon")
    assert reply["Reply-Text"] == "+OK accepted"
    assert reply["Allowed-Events"] == "ALL"
    await client.close()


async def test_auth_timeout_disconnects() -> None:
    async with FreeSwitchSimulator(auth_timeout=0.2) as fs:
        client = await Esl.open(fs, password=None)
        await client.closed(timeout=2)
        assert client.frames[-1].content_type == "text/disconnect-notice"


async def test_acl_rude_rejection() -> None:
    async with FreeSwitchSimulator(acl=["10.0.0.0/8"]) as fs:
        client = await Esl.open(fs, password=None)
        await client.closed()
        assert [f.content_type for f in client.frames] == ["text/rude-rejection"]
        assert client.frames[0].body == "Access Denied, go away.\n"
        assert fs.stats["rejected"] == 1
    async with FreeSwitchSimulator(acl=["127.0.0.0/8"]) as fs:
        client = await Esl.open(fs)
        await client.close()


async def test_unknown_command_keeps_connection(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    assert (await client.send("frobnicate now"))["Reply-Text"] == "-ERR command not found"
    assert await client.api("nosuchapi arg") == "-ERR nosuchapi Command not found!\n"
    assert (await client.api("uptime")).isdigit()
    await client.close()


async def test_event_formats_and_common_headers(freeswitch: FreeSwitchSimulator) -> None:
    for fmt in ("plain", "json", "xml"):
        client = await Esl.open(freeswitch)
        reply = await client.send(f"event {fmt} CHANNEL_CREATE CHANNEL_ANSWER")
        assert reply["Reply-Text"] == f"+OK event listener enabled {fmt}"
        freeswitch.endpoint("user/1001", answer_after=0)
        assert (await client.api("originate user/1001 &park()")).startswith("+OK ")
        answer = await client.event("CHANNEL_ANSWER")
        assert answer.content_type == f"text/event-{fmt}"
        assert list(answer.keys())[:13] == COMMON
        assert answer["Core-UUID"] == freeswitch.identity.core_uuid
        assert answer["Answer-State"] == "answered"
        assert {e.name for e in client.events} == {"CHANNEL_CREATE", "CHANNEL_ANSWER"}
        await client.close()
    await hangup_all(freeswitch)


async def hangup_all(fs: FreeSwitchSimulator) -> None:
    channels = list(fs.channels.values())
    for channel in channels:
        channel.hangup()
    await asyncio.wait_for(asyncio.gather(*(c.done for c in channels)), 5)


async def test_event_sequence_grows_and_heartbeat() -> None:
    async with FreeSwitchSimulator(heartbeat=0.05) as fs:
        client = await Esl.open(fs)
        await client.send("event plain HEARTBEAT")
        beats = await client.wait_for(lambda e: e.name == "HEARTBEAT", count=3, timeout=3)
        numbers = [int(str(b["Event-Sequence"])) for b in beats]
        assert numbers == sorted(numbers) and len(set(numbers)) == 3
        assert beats[0]["Event-Info"] == "System Ready"
        assert beats[0]["FreeSWITCH-Version"] == "1.10.12-release~64bit"
        await client.close()


async def test_custom_events_and_sendevent(freeswitch: FreeSwitchSimulator) -> None:
    listener = await Esl.open(freeswitch)
    await listener.send("event plain CUSTOM my::one")
    sender = await Esl.open(freeswitch)
    reply = await sender.send(
        "sendevent CUSTOM", {"Event-Subclass": "my::two", "X": "skip"}, body=None
    )
    assert str(reply["Reply-Text"]).startswith("+OK ")
    reply = await sender.send("sendevent CUSTOM", {"Event-Subclass": "my::one", "X": "a b"}, "hi")
    event_uuid = reply["Reply-Text"][4:]
    got = await listener.event("my::one")
    assert got["X"] == "a b" and got.body == "hi" and got["Event-UUID"] == event_uuid
    assert [e.name for e in listener.events] == ["my::one"]
    await listener.close()
    await sender.close()


async def test_nixevent_and_noevents(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    await client.send("event plain API HEARTBEAT")
    assert (await client.send("nixevent API"))["Reply-Text"] == "+OK events nixed"
    await client.api("status")
    await client.send("event plain CHANNEL_CREATE")
    await client.api("status")
    assert not client.events
    assert (await client.send("noevents"))["Reply-Text"] == "+OK no longer listening for events"
    await client.send("event plain API")
    await client.api("status")
    await client.event("API")
    await client.close()


async def test_filters(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    await client.send("event plain API")
    reply = await client.send("filter API-Command version")
    assert reply["Reply-Text"] == "+OK filter added. [API-Command]=[version]"
    await client.api("status")
    await client.api("VERSION")  # case-insensitive value match, but unknown command
    await client.api("version")
    events = await client.wait_for(lambda e: e.name == "API", count=2)
    assert [e["API-Command"] for e in events] == ["VERSION", "version"]
    await client.send("filter API-Command /^upt/")
    await client.api("uptime")
    await client.event("API", API_Command="uptime")
    reply = await client.send("filter delete API-Command version")
    assert reply["Reply-Text"] == "+OK filter deleted. [API-Command]=[version]"
    await client.api("version")
    await client.api("uptime")
    await client.wait_for(lambda e: e.get("API-Command") == "uptime", count=2)
    assert sum(e.get("API-Command") == "version" for e in client.events) == 1
    await client.close()


async def test_unique_id_filter_hides_background_job(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    await client.send("event plain ALL")
    await client.send("filter Unique-ID 00000000-0000-0000-0000-000000000000")
    job = "11111111-2222-3333-4444-555555555555"
    reply = await client.send("bgapi status", {"Job-UUID": job})
    assert reply["Reply-Text"] == f"+OK Job-UUID: {job}" and reply["Job-UUID"] == job
    await client.send("filter Job-UUID " + job)
    await client.send("bgapi version", {"Job-UUID": job})
    done = await client.event("BACKGROUND_JOB")
    assert done["Job-Command"] == "version" and (done.body or "").startswith("FreeSWITCH Version")
    assert len([e for e in client.events if e.name == "BACKGROUND_JOB"]) == 1
    await client.close()


async def test_myevents_limits_to_one_channel(freeswitch: FreeSwitchSimulator) -> None:
    freeswitch.endpoint("user/1001", answer_after=0)
    control = await Esl.open(freeswitch)
    first = (await control.api("originate user/1001 &park()")).split()[1]
    watcher = await Esl.open(freeswitch)
    assert (await watcher.send(f"myevents {first}"))["Reply-Text"] == "+OK Events Enabled"
    await control.api("originate user/1001 &park()")
    await control.api(f"uuid_kill {first}")
    await watcher.event("CHANNEL_HANGUP_COMPLETE")
    names = {e.name for e in watcher.events}
    assert {e["Unique-ID"] for e in watcher.events} == {first}
    assert "CHANNEL_CALLSTATE" not in names and "CHANNEL_HANGUP" in names
    await hangup_all(freeswitch)
    await control.close()
    await watcher.close()


async def test_connection_options_replies(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    expected = {
        "linger": "+OK will linger",
        "linger 5": "+OK will linger 5 seconds",
        "nolinger": "+OK will not linger",
        "log debug": "+OK log level debug [7]",
        "log 3": "+OK log level 3 [3]",
        "nolog": "+OK no longer logging",
        "divert_events on": "+OK events diverted",
        "myevents": "-ERR invalid uuid",
        "getvar anything": "-ERR command not found",
        "sendmsg 00000000-0000-0000-0000-000000000000": (
            "-ERR invalid session id [00000000-0000-0000-0000-000000000000]"
        ),
    }
    for command, text in expected.items():
        assert (await client.send(command))["Reply-Text"] == text, command
    await client.close()


async def test_log_frames(freeswitch: FreeSwitchSimulator) -> None:
    freeswitch.endpoint("user/1001", answer_after=0)
    client = await Esl.open(freeswitch)
    await client.send("log info")
    await client.api("originate user/1001 &log(INFO hello from the dialplan)")
    await client.api("originate user/1001 &log(DEBUG too verbose)")
    logs = await client.wait_for(lambda f: f.content_type == "log/data", frames=True)
    assert logs[0]["Log-Level"] == "6"
    assert (logs[0].body or "").endswith("hello from the dialplan\n")
    await asyncio.sleep(0.1)
    assert len([f for f in client.frames if f.content_type == "log/data"]) == 1
    await client.close()


async def test_exit(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    assert (await client.send("exit"))["Reply-Text"] == "+OK bye"
    await client.closed()
    assert client.frames[-1].content_type == "text/disconnect-notice"
    assert client.frames[-1].body == GOODBYE


async def test_nothing_follows_the_disconnect_notice(freeswitch: FreeSwitchSimulator) -> None:
    """Events raised while the goodbye is still being written are not sent behind it."""
    client = await Esl.open(freeswitch)
    await client.send("event plain HEARTBEAT")
    commands = freeswitch.stats["commands"]
    freeswitch.faults.stall(0.3)  # the writer waits before "+OK bye" and the notice
    client.write(b"exit\n\n")
    await until(lambda: freeswitch.stats["commands"] > commands, 5)
    await asyncio.sleep(0.05)  # the exit has queued its reply and notice, and waits on them
    freeswitch.emit(freeswitch.identity.common("HEARTBEAT"))
    await client.closed()
    assert [f.content_type for f in client.frames[-2:]] == [
        "command/reply", "text/disconnect-notice"]
    assert client.events == []


async def test_api_holds_events_until_its_reply(freeswitch: FreeSwitchSimulator) -> None:
    """mod_event_socket runs api in the connection thread: no event overtakes the reply."""
    freeswitch.endpoint("user/1001", answer_after=0.1)
    client = await Esl.open(freeswitch)
    await client.send("event plain ALL")
    reply = await client.send("api originate user/1001 &park()")
    uuid = (reply.body or "").split()[1]
    position = client.frames.index(reply)
    before = [f for f in client.frames[:position] if f.get("Unique-ID") == uuid]
    assert before == []
    await client.event("CHANNEL_PARK", Unique_ID=uuid)
    names = client.names(uuid)
    assert names[:6] == [
        "CHANNEL_OUTGOING",
        "CHANNEL_STATE",
        "CHANNEL_CREATE",
        "CHANNEL_ORIGINATE",
        "CHANNEL_STATE",
        "CHANNEL_STATE",
    ]
    assert "CHANNEL_PROGRESS" in names and "CHANNEL_ANSWER" in names
    await hangup_all(freeswitch)
    await client.close()


async def test_json_body_and_uuid_dump_json(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    await client.send("event json BACKGROUND_JOB")
    await client.send("bgapi version")
    job = await client.event("BACKGROUND_JOB")
    assert job.body == "FreeSWITCH Version 1.10.12-release~64bit ( 64bit)\n"
    freeswitch.endpoint("user/1001", answer_after=0)
    uuid = (await client.api("originate user/1001 &park()")).split()[1]
    dump = json.loads(await client.api(f"uuid_dump {uuid} json"))
    assert dump["Unique-ID"] == uuid and dump["Answer-State"] == "answered"
    await hangup_all(freeswitch)
    await client.close()


async def test_unreadable_command_is_a_reported_disconnect(
    freeswitch: FreeSwitchSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    client = await Esl.open(freeswitch)
    client.write(b"sendevent CUSTOM\nContent-Length: lots\n\n")
    await client.closed()
    assert client.frames[-1].content_type == "text/disconnect-notice"
    assert "unreadable command" in caplog.text and "ClueCon" not in caplog.text


async def test_resume_and_divert_off(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    assert (await client.send("resume"))["Reply-Text"] == "+OK"
    assert (await client.send("divert_events off"))["Reply-Text"] == "+OK events not diverted"
    assert (await client.send("filter delete all"))["Reply-Text"] == "+OK filter deleted."
    assert (await client.send("filter onlyheader"))["Reply-Text"] == "-ERR invalid syntax"
    await client.close()


async def test_ipv6_loopback() -> None:
    try:
        fs = FreeSwitchSimulator(host="::1")
        await fs.start()
    except OSError as exc:  # a host without IPv6 cannot run this check
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        client = await Esl.open(fs)
        assert (await client.api("version")).startswith("FreeSWITCH Version")
        await client.close()
    finally:
        await fs.stop()


async def test_nixevent_out_of_all(freeswitch: FreeSwitchSimulator) -> None:
    client = await Esl.open(freeswitch)
    await client.send("event plain ALL")
    await client.send("nixevent API")
    await client.send("bgapi status")
    await client.event("BACKGROUND_JOB")
    assert "API" not in {e.name for e in client.events}
    await client.send("event plain API")
    await client.api("status")
    await client.event("API")
    await client.close()
