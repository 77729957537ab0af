"""API commands (``api`` and ``bgapi``): mod_commands as the simulator knows it.

Outputs are FreeSWITCH's texts: ``+OK <uuid>\\n`` for originate, ``+OK Message sent\\n``
for uuid_broadcast, ``-ERR No such channel!\\n`` for an unknown uuid, and for an unknown
command ``-ERR <cmd> Command not found!\\n``. Every execution fires an API event first,
as switch_api_execute does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from genesis.protocol.parser import encode_value
from genesis.testing.apps import bridge_channels
from genesis.testing.channels import Channel, Message
from genesis.testing.events import VERSION

if TYPE_CHECKING:
    from genesis.testing.listener import Listener
    from genesis.testing.server import FreeSwitchSimulator

Api = Callable[["FreeSwitchSimulator", str], Awaitable[str]]

logger = logging.getLogger("genesis.testing")

NO_CHANNEL = "-ERR No such channel!\n"

_CHANNEL_COLUMNS = [
    "uuid",
    "direction",
    "created",
    "created_epoch",
    "name",
    "state",
    "cid_name",
    "cid_num",
    "ip_addr",
    "dest",
    "application",
    "application_data",
    "dialplan",
    "context",
    "read_codec",
    "read_rate",
    "read_bit_rate",
    "write_codec",
    "write_rate",
    "write_bit_rate",
    "secure",
    "hostname",
    "presence_id",
    "presence_data",
    "accountcode",
    "callstate",
    "callee_name",
    "callee_num",
    "callee_direction",
    "call_uuid",
    "sent_callee_name",
    "sent_callee_num",
    "initial_cid_name",
    "initial_cid_num",
    "initial_ip_addr",
    "initial_dest",
    "initial_dialplan",
    "initial_context",
]
_CALL_COLUMNS = [
    *_CHANNEL_COLUMNS[:30],
    "b_uuid",
    "b_direction",
    "b_created",
    "b_created_epoch",
    "b_name",
    "b_state",
    "b_cid_name",
    "b_cid_num",
    "b_dest",
    "b_callstate",
    "b_callee_name",
    "b_callee_num",
    "call_created_epoch",
]


def split_originate(args: str) -> list[str]:
    """Split originate's arguments: a leading ``{...}`` may contain spaces."""
    args = args.strip()
    parts: list[str] = []
    if args.startswith("{"):
        depth = 0
        for index, char in enumerate(args):
            depth += char == "{"
            depth -= char == "}"
            if depth == 0:
                end = args.find(" ", index)
                end = len(args) if end < 0 else end
                parts.append(args[:end])
                args = args[end:].strip()
                break
    tokens = args.split()
    # Be lenient where FreeSWITCH needs quotes: "&app(arg with spaces)" stays whole.
    for index, token in enumerate(tokens):
        if token.startswith("&") and "(" in token and not token.endswith(")"):
            for end in range(index + 1, len(tokens)):
                if tokens[end].endswith(")"):
                    tokens[index : end + 1] = [" ".join(tokens[index : end + 1])]
                    break
            break
    return parts + tokens


def parse_target(target: str) -> list[tuple[str, str]] | None:
    """``&app(args)`` or ``&app args`` -> [(app, args)]; an extension gives None."""
    if not target.startswith("&"):
        return None
    body = target[1:]
    if "(" in body and body.endswith(")"):
        name, _, arg = body[:-1].partition("(")
        return [(name, arg)]
    name, _, arg = body.partition(" ")
    return [(name, arg)]


class Apis:
    """The API table; ``fs.apis.register(name, coroutine)`` adds or replaces one."""

    def __init__(self, sim: FreeSwitchSimulator) -> None:
        self.sim = sim
        self.table: dict[str, Api] = {
            "status": _status,
            "uptime": _uptime,
            "version": _version,
            "create_uuid": _create_uuid,
            "originate": _originate,
            "uuid_kill": _uuid_kill,
            "uuid_bridge": _uuid_bridge,
            "uuid_send_dtmf": _uuid_send_dtmf,
            "uuid_broadcast": _uuid_broadcast,
            "uuid_exists": _uuid_exists,
            "uuid_dump": _uuid_dump,
            "uuid_getvar": _uuid_getvar,
            "uuid_setvar": _uuid_setvar,
            "uuid_answer": _uuid_answer,
            "uuid_park": _uuid_park,
            "hupall": _hupall,
            "show": _show,
            "global_getvar": _global_getvar,
            "global_setvar": _global_setvar,
            "echo": _echo,
        }

    def register(self, name: str, api: Api) -> None:
        self.table[name] = api

    async def execute(self, line: str, listener: Listener | None) -> str:
        command, _, args = line.strip().partition(" ")
        args = args.strip()
        headers = self.sim.identity.common("API")
        headers["API-Command"] = command
        if args:
            headers["API-Command-Argument"] = args
        self.sim.emit(headers)
        api = self.table.get(command)
        if api is None:
            return f"-ERR {command} Command not found!\n"
        try:
            return await api(self.sim, args)
        except Exception as exc:
            logger.exception("api %s failed", command)
            return f"-ERR {command}: {exc}\n"


async def _status(sim: FreeSwitchSimulator, args: str) -> str:
    ident = sim.identity
    count = len(sim.channels)
    return (
        f"UP {ident.uptime_text()}\n"
        f"FreeSWITCH (Version {VERSION.replace('~', '  ')}) is ready\n"
        f"{ident.sessions_since_startup} session(s) since startup\n"
        f"{count} session(s) - peak {ident.session_peak}, last 5min {ident.session_peak} \n"
        f"0 session(s) per Sec out of max 200, peak 0, last 5min 0 \n"
        f"1000 session(s) max\n"
        f"min idle cpu 0.00/99.00\n"
        f"Current Stack Size/Max 240K/8192K\n"
    )


async def _uptime(sim: FreeSwitchSimulator, args: str) -> str:
    return str(int(time.time() - sim.identity.started))


async def _version(sim: FreeSwitchSimulator, args: str) -> str:
    return f"FreeSWITCH Version {VERSION} ( 64bit)\n"


async def _create_uuid(sim: FreeSwitchSimulator, args: str) -> str:
    return str(uuidlib.uuid4())


async def _echo(sim: FreeSwitchSimulator, args: str) -> str:
    return args


async def _originate(sim: FreeSwitchSimulator, args: str) -> str:
    """``originate <dial string> <&app(args)|extension> [dialplan] [context] [cid name]
    [cid number] [timeout]``."""
    parts = split_originate(args)
    if len(parts) < 2:
        return (
            "-USAGE: <call url> <exten>|&<application_name>(<app_args>) [<dialplan>] "
            "[<context>] [<cid_name>] [<cid_num>] [<timeout_sec>]\n"
        )
    dial, target = parts[0], parts[1]
    context = parts[3] if len(parts) > 3 else "default"
    cid_name = parts[4] if len(parts) > 4 else None
    cid_num = parts[5] if len(parts) > 5 else None
    timeout = float(parts[6]) if len(parts) > 6 and parts[6].isdigit() else None
    apps = parse_target(target)
    leg, cause = await sim.originate(
        dial,
        apps=apps,
        extension=None if apps is not None else target,
        context=context,
        caller_id_name=cid_name,
        caller_id_number=cid_num,
        timeout=timeout,
    )
    if leg is None:
        return f"-ERR {cause}\n"
    return f"+OK {leg.uuid}\n"


def _channel(sim: FreeSwitchSimulator, uuid: str) -> Channel | None:
    channel = sim.channels.get(uuid)
    return channel if channel is not None and not channel.done.done() else None


async def _uuid_kill(sim: FreeSwitchSimulator, args: str) -> str:
    parts = args.split()
    channel = _channel(sim, parts[0]) if parts else None
    if channel is None:
        return NO_CHANNEL
    channel.hangup(parts[1] if len(parts) > 1 else "NORMAL_CLEARING")
    return "+OK\n"


async def _uuid_answer(sim: FreeSwitchSimulator, args: str) -> str:
    channel = _channel(sim, args.strip())
    if channel is None:
        return NO_CHANNEL
    channel.mark_answered()
    return "+OK\n"


async def _uuid_park(sim: FreeSwitchSimulator, args: str) -> str:
    channel = _channel(sim, args.strip())
    if channel is None:
        return NO_CHANNEL

    async def park() -> None:
        await channel.park()

    # switch_ivr_park_session sets CS_PARK at once; the state machine's park handler then
    # runs the park loop (CHANNEL_PARK). The park application parks in CS_EXECUTE instead.
    channel.set_state("CS_PARK")
    channel.take_over(park)
    return "+OK\n"


async def _uuid_bridge(sim: FreeSwitchSimulator, args: str) -> str:
    """Both channels leave their dialplan (CS_HIBERNATE, CS_RESET, CS_SOFT_EXECUTE) and
    meet in a bridge run by the first one, as switch_ivr_uuid_bridge does."""
    parts = args.split()
    if len(parts) != 2:
        return "-USAGE: <uuid> <other_uuid>\n"
    a, b = _channel(sim, parts[0]), _channel(sim, parts[1])
    if a is None or b is None or a.hungup or b.hungup:
        return f"-ERR Invalid uuid {parts[0] if a is None else parts[1]}\n"
    a.other, b.other = b, a
    a.other_type, b.other_type = "originatee", "originator"
    stamp = int(time.time())
    for me, them in ((a, b), (b, a)):
        me.variables["uuid_bridge"] = them.uuid
        history = f"{stamp}:{uuidlib.uuid4()}:uuid_br:{them.uuid}"
        me.profile.transfer_source = history
        me.profile.index += 1
        me.variables["transfer_history"] = history
        me.variables["transfer_source"] = history
    # The new profiles: the side running the bridge becomes the logical inbound leg,
    # the other one leaves the dialplan.
    a.profile.logical_direction = "inbound"
    b.hit_dialplan = False

    def soft_execute(channel: Channel) -> None:
        channel.variables.pop("uuid_bridge", None)
        channel.set_state("CS_HIBERNATE")
        channel.set_state("CS_RESET")
        channel.set_state("CS_SOFT_EXECUTE")

    async def run_a() -> None:
        soft_execute(a)
        a.fire(
            "CHANNEL_EXECUTE",
            post={"Application": "uuid_bridge", "Application-Data": b.uuid},
            calling=("switch_ivr_bridge.c", "uuid_bridge_on_soft_execute", "1236"),
        )
        await bridge_channels(a, b, hangup_after_bridge=True)

    async def run_b() -> None:
        soft_execute(b)
        b.fire(
            "CHANNEL_EXECUTE",
            post={"Application": "uuid_bridge", "Application-Data": a.uuid},
            calling=("switch_ivr_bridge.c", "uuid_bridge_on_soft_execute", "1243"),
        )
        b.set_state("CS_EXCHANGE_MEDIA")
        await b.serve_messages(asyncio.Event())

    a.take_over(run_a)
    b.take_over(run_b)
    return f"+OK {b.uuid}\n"


async def _uuid_send_dtmf(sim: FreeSwitchSimulator, args: str) -> str:
    parts = args.split()
    if len(parts) < 2:
        return "-USAGE: <uuid> <dtmf_data>\n"
    channel = _channel(sim, parts[0])
    if channel is None:
        return NO_CHANNEL
    digits, _, duration = parts[1].partition("@")
    duration_ms = int(duration) if duration.isdigit() else 2000
    # A loopback leg hands the digits to its other half; any other channel receives
    # them as if its far end pressed them.
    receiver = channel.peer or channel
    channel.variables["last_dtmf_duration"] = str(duration_ms + 500)
    sim.spawn(sim.press_digits(receiver, digits, duration_ms))
    return f"+OK {channel.uuid} sent DTMF {parts[1]}.\n"


async def _uuid_broadcast(sim: FreeSwitchSimulator, args: str) -> str:
    parts = args.split()
    if len(parts) < 2:
        return "-USAGE: <uuid> <path> [aleg|bleg|both]\n"
    channel = _channel(sim, parts[0])
    if channel is None:
        return NO_CHANNEL
    leg = parts[2] if len(parts) > 2 else "aleg"
    targets = [channel]
    other = sim.channels.get(channel.bridged_to or "")
    if leg == "bleg" and other is not None:
        targets = [other]
    elif leg == "both" and other is not None:
        targets.append(other)
    path = parts[1]
    app, arg = "playback", path
    if path.startswith("app::"):
        app, _, arg = path[5:].partition("::")
    for target in targets:
        # The COMMAND event is stamped when queued; FreeSWITCH appends a second header
        # set (PRIVATE_COMMAND and the channel data) when the channel runs it.
        command = sim.identity.common(
            "COMMAND", calling=("switch_ivr_async.c", "switch_ivr_broadcast", "5731")
        )
        command |= {
            "call-command": "execute",
            "execute-app-name": app,
            "execute-app-arg": arg,
            "event-lock": "true",
            "lead-frames": "5",
        }
        target.queue(Message(app, arg, event_uuid=str(uuidlib.uuid4()), command_headers=command))
    return "+OK Message sent\n"


async def _uuid_exists(sim: FreeSwitchSimulator, args: str) -> str:
    return "true" if _channel(sim, args.strip()) is not None else "false"


async def _uuid_dump(sim: FreeSwitchSimulator, args: str) -> str:
    parts = args.split()
    channel = _channel(sim, parts[0]) if parts else None
    if channel is None:
        return NO_CHANNEL
    headers: dict[str, str] = {"Event-Name": "CHANNEL_DATA"}
    channel.data(headers, with_variables=True)
    if len(parts) > 1 and parts[1] == "json":
        return json.dumps(headers)
    return "".join(f"{name}: {encode_value(value)}\n" for name, value in headers.items())


async def _uuid_getvar(sim: FreeSwitchSimulator, args: str) -> str:
    parts = args.split()
    channel = _channel(sim, parts[0]) if parts else None
    if channel is None or len(parts) < 2:
        return NO_CHANNEL
    return channel.variables.get(parts[1], "_undef_")


async def _uuid_setvar(sim: FreeSwitchSimulator, args: str) -> str:
    parts = args.split(maxsplit=2)
    channel = _channel(sim, parts[0]) if parts else None
    if channel is None or len(parts) < 2:
        return NO_CHANNEL
    if len(parts) == 3:
        channel.variables[parts[1]] = parts[2]
    else:
        channel.variables.pop(parts[1], None)
    return "+OK\n"


async def _hupall(sim: FreeSwitchSimulator, args: str) -> str:
    parts = args.split()
    cause = parts[0] if parts else "MANAGER_REQUEST"
    var = parts[1] if len(parts) > 2 else None
    for channel in list(sim.channels.values()):
        if var is None or channel.variables.get(var) == parts[2]:
            channel.hangup(cause)
    return f"+OK hangup all channels with cause {cause}\n"


def _row(channel: Channel, hostname: str) -> dict[str, str]:
    created = channel.profile.times.get("Channel-Created-Time", 0)
    return {
        "uuid": channel.uuid,
        "direction": channel.direction,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created / 1e6)),
        "created_epoch": str(created // 1_000_000),
        "name": channel.name,
        "state": channel.state,
        "cid_name": channel.profile.caller_id_name,
        "cid_num": channel.profile.caller_id_number,
        "ip_addr": "",
        "dest": channel.profile.destination_number,
        "application": channel.variables.get("current_application", ""),
        "application_data": channel.variables.get("current_application_data", ""),
        "dialplan": channel.profile.dialplan,
        "context": channel.profile.context,
        "read_codec": "L16",
        "read_rate": "8000",
        "read_bit_rate": "128000",
        "write_codec": "L16",
        "write_rate": "8000",
        "write_bit_rate": "128000",
        "secure": "",
        "hostname": hostname,
        "presence_id": "",
        "presence_data": "",
        "accountcode": "",
        "callstate": channel.call_state,
        "callee_name": channel.profile.callee_id_name,
        "callee_num": channel.profile.callee_id_number,
        "callee_direction": "",
        "call_uuid": channel.variables.get("call_uuid", channel.uuid),
        "sent_callee_name": "",
        "sent_callee_num": "",
        "initial_cid_name": channel.profile.caller_id_name,
        "initial_cid_num": channel.profile.caller_id_number,
        "initial_ip_addr": "",
        "initial_dest": channel.profile.destination_number,
        "initial_dialplan": channel.profile.dialplan,
        "initial_context": channel.profile.context,
    }


async def _show(sim: FreeSwitchSimulator, args: str) -> str:
    parts = args.split()
    what = parts[0].lower() if parts else ""
    as_json = len(parts) >= 3 and parts[-2].lower() == "as" and parts[-1].lower() == "json"
    live = [c for c in sim.channels.values() if not c.done.done()]
    hostname = sim.identity.hostname
    if what == "channels":
        columns = _CHANNEL_COLUMNS
        rows = [_row(c, hostname) for c in live]
    elif what == "calls":
        columns = _CALL_COLUMNS
        rows = []
        seen: set[str] = set()
        for channel in live:
            other = sim.channels.get(channel.bridged_to or "")
            if channel.uuid in seen or (other is not None and other.uuid in seen):
                continue
            seen.add(channel.uuid)
            row = _row(channel, hostname)
            created = row["created_epoch"]
            if other is not None:
                seen.add(other.uuid)
                b = _row(other, hostname)
                for name in (
                    "uuid",
                    "direction",
                    "created",
                    "created_epoch",
                    "name",
                    "state",
                    "cid_name",
                    "cid_num",
                    "dest",
                    "callstate",
                    "callee_name",
                    "callee_num",
                ):
                    row["b_" + name] = b[name]
            row["call_created_epoch"] = created
            rows.append({name: row.get(name, "") for name in columns})
    else:
        return "-USAGE: show channels|calls [as json]\n"
    if as_json:
        if not rows:
            return json.dumps({"row_count": 0})
        return json.dumps({"row_count": len(rows), "rows": rows}, indent=1)
    lines = [",".join(columns)]
    lines += [",".join(row.get(name, "") for name in columns) for row in rows]
    return "\n".join(lines) + f"\n\n{len(rows)} total.\n"


async def _global_getvar(sim: FreeSwitchSimulator, args: str) -> str:
    name = args.strip()
    if not name:
        return "".join(f"{k}={v}\n" for k, v in sim.global_variables.items())
    return sim.global_variables.get(name, "")


async def _global_setvar(sim: FreeSwitchSimulator, args: str) -> str:
    name, _, value = args.partition("=")
    sim.global_variables[name.strip()] = value.strip()
    return "+OK\n"
