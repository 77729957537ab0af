"""Dialplan applications of the simulator (mod_dptools and mod_event_socket's ``socket``).

Each application is a coroutine ``app(channel, argument, message) -> response``: the
response becomes ``Application-Response`` on CHANNEL_EXECUTE_COMPLETE. Applications fire
the same events as their FreeSWITCH namesakes (PLAYBACK_START/STOP around a playback,
CHANNEL_BRIDGE/UNBRIDGE around a bridge, CHANNEL_PARK/UNPARK around park) and end early,
like FreeSWITCH's media loops, when the channel hangs up under them.
"""

from __future__ import annotations

import asyncio
import re

from genesis.testing.channels import App, Channel, Hangup, Message, now_us, split_args

_LOG_LEVELS = {
    "CONSOLE": 0,
    "ALERT": 1,
    "CRIT": 2,
    "ERR": 3,
    "WARNING": 4,
    "NOTICE": 5,
    "INFO": 6,
    "DEBUG": 7,
}


async def answer(channel: Channel, arg: str, message: Message) -> str:
    channel.mark_answered()
    return ""


async def pre_answer(channel: Channel, arg: str, message: Message) -> str:
    channel.mark_pre_answered()
    return ""


async def ring_ready(channel: Channel, arg: str, message: Message) -> str:
    channel.mark_ring_ready()
    return ""


async def park(channel: Channel, arg: str, message: Message) -> str:
    await channel.park()
    return ""


async def hangup(channel: Channel, arg: str, message: Message) -> str:
    channel.hangup(arg.strip() or "NORMAL_CLEARING")
    return ""


async def sleep(channel: Channel, arg: str, message: Message) -> str:
    await channel.sleep(int(arg or "0") / 1000)
    return ""


async def set_variable(channel: Channel, arg: str, message: Message) -> str:
    name, _, value = arg.partition("=")
    if value:
        channel.variables[name.strip()] = value
    else:
        channel.variables.pop(name.strip(), None)
    return ""


async def export(channel: Channel, arg: str, message: Message) -> str:
    name, _, value = arg.partition("=")
    name = name.strip()
    if name.startswith("nolocal:"):
        name = name[len("nolocal:") :]
    else:
        await set_variable(channel, f"{name}={value}", message)
    channel.exported[name] = value
    return ""


async def echo(channel: Channel, arg: str, message: Message) -> str:
    await channel.wait_hangup()
    raise Hangup


async def log(channel: Channel, arg: str, message: Message) -> str:
    level, _, text = arg.partition(" ")
    if level.upper() not in _LOG_LEVELS:
        level, text = "DEBUG", arg
    channel.sim.log(_LOG_LEVELS[level.upper()], text, channel)
    return ""


async def play_file(channel: Channel, path: str, *, stop_on_dtmf: bool = False) -> str:
    """Play one file: PLAYBACK_START, the file's duration, PLAYBACK_STOP."""
    sim = channel.sim
    seconds = sim.file_durations.get(path, sim.playback_seconds)
    channel.fire("PLAYBACK_START", post={"Playback-File-Path": path})
    status = "done"
    played = seconds
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        if stop_on_dtmf:
            if await channel.wait_digit_or_time(seconds):
                status = "break"
                played = loop.time() - started
        else:
            await channel.sleep(seconds)
    except Hangup:
        status = "break"
        played = loop.time() - started
    samples = int(played * 8000)
    channel.variables["playback_last_offset_pos"] = str(samples)
    channel.variables["playback_seconds"] = str(int(played))
    channel.variables["playback_ms"] = str(int(played * 1000))
    channel.variables["playback_samples"] = str(samples)
    channel.fire(
        "PLAYBACK_STOP",
        post={"Playback-File-Path": path, "Playback-Status": status},
    )
    if channel.hungup:
        raise Hangup
    return "FILE PLAYED"


async def playback(channel: Channel, arg: str, message: Message) -> str:
    return await play_file(channel, arg.strip())


async def say(channel: Channel, arg: str, message: Message) -> str:
    # "<module>[:<lang>] <kind> <method> [<gender>] <text>": spoken as one prompt.
    parts = arg.split()
    if len(parts) < 4:
        return "-ERR usage"
    await channel.sleep(channel.sim.playback_seconds)
    return ""


async def play_and_get_digits(channel: Channel, arg: str, message: Message) -> str:
    """Prompt, collect digits, validate, retry: mod_dptools' play_and_get_digits.

    Arguments: ``min max tries timeout_ms terminators file invalid_file [var_name
    [regexp [digit_timeout_ms [transfer_on_failure]]]]``. Digits come from the far end:
    an endpoint's scripted ``digits``, or ``uuid_send_dtmf``.
    """
    args = split_args(arg)
    if len(args) < 6:
        return "-ERR usage"
    minimum, maximum, tries = int(args[0]), int(args[1]), int(args[2])
    timeout = int(args[3]) / 1000
    terminators = args[4] if args[4] != "none" else ""
    prompt = args[5]
    invalid = args[6] if len(args) > 6 else ""
    var_name = args[7] if len(args) > 7 else "pagd_input"
    regexp = args[8] if len(args) > 8 else ""
    digit_timeout = int(args[9]) / 1000 if len(args) > 9 else timeout
    for _ in range(max(1, tries)):
        await play_file(channel, prompt, stop_on_dtmf=True)
        digits = ""
        wait = timeout
        while len(digits) < maximum:
            digit = await channel.next_digit(wait)
            if digit is None:
                break
            if digit in terminators:
                break
            digits += digit
            wait = digit_timeout
        valid = minimum <= len(digits) <= maximum and (
            not regexp or re.fullmatch(regexp, digits) is not None
        )
        if valid and digits:
            channel.variables[var_name] = digits
            channel.variables["read_result"] = "success"
            return ""
        channel.variables[f"{var_name}_invalid"] = digits
        if invalid and invalid != "silence_stream://250":
            await play_file(channel, invalid)
    channel.variables.pop(var_name, None)
    channel.variables["read_result"] = "failure"
    return ""


async def bridge(channel: Channel, arg: str, message: Message) -> str:
    """Originate the dial string and bridge to it; the app ends when the bridge ends."""
    sim = channel.sim
    for name, value in channel.exported.items():
        channel.variables.setdefault(name, value)
    leg, cause = await sim.originate_leg(
        arg.strip(), originator=channel, timeout=_timeout_of(channel), inherit=channel.exported
    )
    if leg is None:
        channel.variables["originate_disposition"] = cause
        channel.variables["DIALSTATUS"] = "BUSY" if cause == "USER_BUSY" else "NOANSWER"
        channel.variables["last_bridge_hangup_cause"] = cause
        return cause
    await bridge_channels(channel, leg, hangup_after_bridge=False)
    return ""


def _timeout_of(channel: Channel) -> float:
    for name in ("call_timeout", "originate_timeout"):
        value = channel.variables.get(name)
        if value and value.isdigit():
            return float(value)
    return 60.0


async def bridge_channels(a: Channel, b: Channel, *, hangup_after_bridge: bool) -> None:
    """Bridge ``a`` (the side that runs the bridge) and ``b`` until one hangs up.

    When ``a`` hangs up, ``b`` follows at once (its CHANNEL_HANGUP comes before a's
    CHANNEL_UNBRIDGE, as on FreeSWITCH). When ``b`` hangs up, ``a`` continues its
    dialplan unless ``hangup_after_bridge`` (uuid_bridge, or the channel variable).
    """
    a.other, b.other = b, a
    a.other_type, b.other_type = "originatee", "originator"
    a.bridged_to, b.bridged_to = b.uuid, a.uuid
    now = now_us()
    for me, them in ((a, b), (b, a)):
        me.variables["bridge_channel"] = them.name
        me.variables["bridge_uuid"] = them.uuid
        me.variables["signal_bond"] = them.uuid
        me.profile.times["Channel-Bridged-Time"] = now
    hangup_after_bridge = hangup_after_bridge or (
        a.variables.get("hangup_after_bridge", "").lower() == "true"
    )
    ended = asyncio.Event()

    def a_gone(_: Channel) -> None:
        ended.set()
        if not b.hungup:
            b.hangup("NORMAL_CLEARING")

    def b_gone(_: Channel) -> None:
        ended.set()
        if hangup_after_bridge and not a.hungup:
            a.hangup("NORMAL_CLEARING")

    ids = {"Bridge-A-Unique-ID": a.uuid, "Bridge-B-Unique-ID": b.uuid}
    a.fire("CHANNEL_BRIDGE", ids)
    a.listeners.append(a_gone)
    b.listeners.append(b_gone)
    if a.hungup:
        a_gone(a)
    if b.hungup:
        b_gone(b)
    try:
        await a.serve_messages(ended)
    finally:
        a.listeners.remove(a_gone)
        b.listeners.remove(b_gone)
        a.bridged_to = b.bridged_to = None
        a.fire("CHANNEL_UNBRIDGE", ids)
        a.variables["last_bridge_to"] = b.uuid
        a.variables["last_bridge_role"] = "originator"
        b.variables["last_bridge_role"] = "originatee"
    if not b.hungup:
        b.hangup("NORMAL_CLEARING")


async def socket(channel: Channel, arg: str, message: Message) -> str:
    """Connect the call to an outbound Event Socket application.

    ``host:port [async] [full]``. In async mode the channel parks and runs what the
    application sends; in static mode each execute runs inline and its sendmsg reply
    waits for it. When the application disconnects the dialplan continues.
    """
    sim = channel.sim
    parts = arg.split()
    if not parts:
        return "-ERR usage"
    host, _, port = parts[0].rpartition(":")
    options = {p.lower() for p in parts[1:]}
    channel.variables["socket_host"] = host
    await sim.serve_outbound(
        channel,
        host or "127.0.0.1",
        int(port),
        asynchronous="async" in options,
        full="full" in options,
    )
    return ""


def standard_applications() -> dict[str, App]:
    """The applications every simulator knows (``fs.applications`` may add more)."""
    return {
        "answer": answer,
        "pre_answer": pre_answer,
        "ring_ready": ring_ready,
        "park": park,
        "hangup": hangup,
        "sleep": sleep,
        "set": set_variable,
        "export": export,
        "echo": echo,
        "log": log,
        "playback": playback,
        "say": say,
        "play_and_get_digits": play_and_get_digits,
        "bridge": bridge,
        "socket": socket,
    }
