"""Event construction: the headers every FreeSWITCH event carries, in FreeSWITCH's order.

FreeSWITCH stamps each event with the switch's identity, the date three ways, the C
source location that fired it and a global ``Event-Sequence``; clients rely on all of
them (the sequence is the only reliable ordering key). The source locations below are
the ones FreeSWITCH 1.10.12 reports, so a client that logs or filters on them sees the
same values it will see in production.
"""

from __future__ import annotations

import itertools
import socket
import time
import uuid
from typing import Final

Headers = dict[str, str]

#: Event name -> (Event-Calling-File, Event-Calling-Function, Event-Calling-Line-Number).
CALLING: Final[dict[str, tuple[str, str, str]]] = {
    "CODEC": ("switch_core_codec.c", "switch_core_session_set_read_codec", "279"),
    "CHANNEL_UUID": ("switch_core_session.c", "switch_core_session_set_uuid", "2051"),
    "CHANNEL_OUTGOING": (
        "switch_core_session.c",
        "switch_core_session_outgoing_channel",
        "768",
    ),
    "CHANNEL_STATE": ("switch_channel.c", "switch_channel_perform_set_running_state", "2408"),
    "CHANNEL_CREATE": ("switch_core_state_machine.c", "switch_core_session_run", "626"),
    "CHANNEL_ORIGINATE": ("switch_core_state_machine.c", "switch_core_session_run", "632"),
    "CHANNEL_CALLSTATE": ("switch_channel.c", "switch_channel_perform_set_callstate", "301"),
    "CHANNEL_EXECUTE": ("switch_core_session.c", "switch_core_session_exec", "2944"),
    "CHANNEL_EXECUTE_COMPLETE": ("switch_core_session.c", "switch_core_session_exec", "2967"),
    "CHANNEL_ANSWER": ("switch_channel.c", "switch_channel_perform_mark_answered", "3846"),
    "CHANNEL_PROGRESS": (
        "switch_channel.c",
        "switch_channel_perform_mark_ring_ready_value",
        "3582",
    ),
    "CHANNEL_PROGRESS_MEDIA": (
        "switch_channel.c",
        "switch_channel_perform_mark_pre_answered",
        "3662",
    ),
    "CHANNEL_PARK": ("switch_ivr.c", "switch_ivr_park", "1002"),
    "CHANNEL_UNPARK": ("switch_ivr.c", "switch_ivr_park", "1213"),
    "CALL_UPDATE": ("switch_channel.c", "switch_channel_flip_cid", "3277"),
    "API": ("switch_loadable_module.c", "switch_api_execute", "2954"),
    "BACKGROUND_JOB": ("mod_event_socket.c", "api_exec", "1572"),
    "PLAYBACK_START": ("switch_ivr_play_say.c", "switch_ivr_play_file", "1646"),
    "PLAYBACK_STOP": ("switch_ivr_play_say.c", "switch_ivr_play_file", "2020"),
    "COMMAND": ("switch_ivr.c", "switch_ivr_parse_next_event", "804"),
    "DTMF": ("switch_channel.c", "switch_channel_dequeue_dtmf", "677"),
    "CHANNEL_BRIDGE": ("switch_ivr_bridge.c", "switch_ivr_multi_threaded_bridge", "1689"),
    "CHANNEL_UNBRIDGE": ("switch_ivr_bridge.c", "switch_ivr_multi_threaded_bridge", "1879"),
    "CHANNEL_HANGUP": ("switch_channel.c", "switch_channel_perform_hangup", "3445"),
    "CHANNEL_HANGUP_COMPLETE": (
        "switch_core_state_machine.c",
        "switch_core_session_reporting_state",
        "943",
    ),
    "CHANNEL_DESTROY": ("switch_core_session.c", "switch_core_session_perform_destroy", "1584"),
    "CHANNEL_DATA": ("mod_event_socket.c", "parse_command", "2021"),
    "HEARTBEAT": ("switch_core.c", "send_heartbeat", "95"),
    "RE_SCHEDULE": ("switch_scheduler.c", "switch_scheduler_execute", "73"),
    "CUSTOM": ("mod_event_socket.c", "parse_command", "1966"),
}
_UNKNOWN_CALLER: Final = ("mod_event_socket.c", "parse_command", "1966")

VERSION: Final = "1.10.12-release~64bit"


class Identity:
    """The switch's identity and event counter, shared by every event it emits."""

    def __init__(self, hostname: str | None = None) -> None:
        self.core_uuid = str(uuid.uuid4())
        self.hostname = hostname or socket.gethostname()
        self.ipv4 = "127.0.0.1"
        self.ipv6 = "::1"
        self.started = time.time()
        self._sequence = itertools.count(1)
        self.sessions_since_startup = 0
        self.session_peak = 0
        self._date_second = -1
        self._dates = ("", "")

    def next_sequence(self) -> int:
        return next(self._sequence)

    def common(self, name: str, *, calling: tuple[str, str, str] | None = None) -> Headers:
        """The 13 headers FreeSWITCH puts first on every event, in its order."""
        now = time.time()
        second = int(now)
        if second != self._date_second:
            # Formatting the date twice per event is measurable under load; it changes
            # once a second.
            self._date_second = second
            self._dates = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)),
                time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second)),
            )
        file, func, line = calling or CALLING.get(name, _UNKNOWN_CALLER)
        return {
            "Event-Name": name,
            "Core-UUID": self.core_uuid,
            "FreeSWITCH-Hostname": self.hostname,
            "FreeSWITCH-Switchname": self.hostname,
            "FreeSWITCH-IPv4": self.ipv4,
            "FreeSWITCH-IPv6": self.ipv6,
            "Event-Date-Local": self._dates[0],
            "Event-Date-GMT": self._dates[1],
            "Event-Date-Timestamp": str(int(now * 1_000_000)),
            "Event-Calling-File": file,
            "Event-Calling-Function": func,
            "Event-Calling-Line-Number": line,
            "Event-Sequence": str(self.next_sequence()),
        }

    def uptime_text(self) -> str:
        """Uptime the way ``status`` and HEARTBEAT spell it."""
        elapsed = time.time() - self.started
        total_us = int(elapsed * 1_000_000)
        seconds, us = divmod(total_us, 1_000_000)
        minutes, seconds = divmod(seconds, 60)
        hours, minutes = divmod(minutes, 60)
        days, hours = divmod(hours, 24)
        years, days = divmod(days, 365)
        ms, us = divmod(us, 1000)
        return (
            f"{years} years, {days} days, {hours} hours, {minutes} minutes, "
            f"{seconds} seconds, {ms} milliseconds, {us} microseconds"
        )
