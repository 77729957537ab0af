"""Simulated channels: FreeSWITCH's state machine and the events it fires on the way.

A FreeSWITCH channel runs in its own thread through the core states (CS_INIT, CS_ROUTING,
CS_EXECUTE, ..., CS_DESTROY); dialplan applications run one after another on that thread,
and messages queued by ``sendmsg`` or ``uuid_broadcast`` are picked up between
applications and while the channel is parked. Each simulated channel has one asyncio task,
its executor, that plays that thread's part, so the order of the events it fires is the
order FreeSWITCH fires them (the corpus captured from FreeSWITCH 1.10.12 is the
reference: CHANNEL_STATE CS_INIT before CHANNEL_CREATE, CHANNEL_HANGUP before the
application that was running completes, CHANNEL_STATE CS_DESTROY after CHANNEL_DESTROY).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from genesis._wait import wait_for
from genesis.testing.events import Headers

if TYPE_CHECKING:
    from genesis.testing.server import FreeSwitchSimulator

logger = logging.getLogger("genesis.testing")

STATE_NUMBERS = {
    "CS_NEW": 0,
    "CS_INIT": 1,
    "CS_ROUTING": 2,
    "CS_SOFT_EXECUTE": 3,
    "CS_EXECUTE": 4,
    "CS_EXCHANGE_MEDIA": 5,
    "CS_PARK": 6,
    "CS_CONSUME_MEDIA": 7,
    "CS_HIBERNATE": 8,
    "CS_RESET": 9,
    "CS_HANGUP": 10,
    "CS_REPORTING": 11,
    "CS_DESTROY": 12,
    "CS_NONE": 13,
}

CALL_STATE_NUMBERS = {
    "DOWN": 0,
    "DIALING": 1,
    "RINGING": 2,
    "EARLY": 3,
    "ACTIVE": 4,
    "HELD": 5,
    "RING_WAIT": 6,
    "HANGUP": 7,
    "UNHELD": 8,
}

#: Q.850 codes of the hangup causes FreeSWITCH reports (``hangup_cause_q850``).
Q850 = {
    "NONE": 0,
    "UNALLOCATED_NUMBER": 1,
    "NO_ROUTE_DESTINATION": 3,
    "NORMAL_CLEARING": 16,
    "USER_BUSY": 17,
    "NO_USER_RESPONSE": 18,
    "NO_ANSWER": 19,
    "SUBSCRIBER_ABSENT": 20,
    "CALL_REJECTED": 21,
    "DESTINATION_OUT_OF_ORDER": 27,
    "INVALID_NUMBER_FORMAT": 28,
    "NORMAL_UNSPECIFIED": 31,
    "NORMAL_CIRCUIT_CONGESTION": 34,
    "NORMAL_TEMPORARY_FAILURE": 41,
    "RECOVERY_ON_TIMER_EXPIRE": 102,
    "ORIGINATOR_CANCEL": 487,
    "USER_NOT_REGISTERED": 606,
    "LOSE_RACE": 502,
    "MANAGER_REQUEST": 503,
}

#: Events that carry the channel's ``variable_*`` headers (FreeSWITCH leaves them off
#: CHANNEL_STATE, CHANNEL_CALLSTATE, DTMF, CHANNEL_OUTGOING, CODEC and COMMAND).
_WITH_VARIABLES = frozenset(
    {
        "CHANNEL_UUID",
        "CHANNEL_CREATE",
        "CHANNEL_ORIGINATE",
        "CHANNEL_EXECUTE",
        "CHANNEL_EXECUTE_COMPLETE",
        "CHANNEL_ANSWER",
        "CHANNEL_PROGRESS",
        "CHANNEL_PROGRESS_MEDIA",
        "CHANNEL_PARK",
        "CHANNEL_UNPARK",
        "CALL_UPDATE",
        "PLAYBACK_START",
        "PLAYBACK_STOP",
        "CHANNEL_BRIDGE",
        "CHANNEL_UNBRIDGE",
        "CHANNEL_HANGUP",
        "CHANNEL_HANGUP_COMPLETE",
        "CHANNEL_DESTROY",
        "CHANNEL_DATA",
    }
)

_PROFILE_TIMES = (
    "Profile-Created-Time",
    "Channel-Created-Time",
    "Channel-Answered-Time",
    "Channel-Progress-Time",
    "Channel-Progress-Media-Time",
    "Channel-Hangup-Time",
    "Channel-Transfer-Time",
    "Channel-Resurrect-Time",
    "Channel-Bridged-Time",
    "Channel-Last-Hold",
    "Channel-Hold-Accum",
)


def now_us() -> int:
    return int(time.time() * 1_000_000)


@dataclass
class Message:
    """A message queued to a channel: what ``sendmsg`` and ``uuid_broadcast`` deliver."""

    app: str
    arg: str = ""
    event_uuid: str | None = None
    loops: int = 1
    #: set for uuid_broadcast: the COMMAND event (stamped when queued) that FreeSWITCH
    #: delivers, re-typed PRIVATE_COMMAND, once the message ran.
    command_headers: Headers | None = None
    done: asyncio.Future[None] | None = None


@dataclass
class Profile:
    """The caller profile: what FreeSWITCH prints as ``Caller-*`` (and ``Other-Leg-*``)."""

    direction: str
    caller_id_name: str
    caller_id_number: str
    destination_number: str
    channel_name: str
    unique_id: str
    context: str = "default"
    dialplan: str = "XML"
    source: str = "mod_loopback"
    callee_id_name: str = ""
    callee_id_number: str = ""
    times: dict[str, int] = field(default_factory=dict)
    orig_caller_id_name: str = ""
    orig_caller_id_number: str = ""
    transfer_source: str = ""
    index: int = 1
    logical_direction: str = ""

    def __post_init__(self) -> None:
        self.orig_caller_id_name = self.orig_caller_id_name or self.caller_id_name
        self.orig_caller_id_number = self.orig_caller_id_number or self.caller_id_number
        self.ani = self.caller_id_number

    def flip(self) -> None:
        """switch_channel_flip_cid: once answered, caller and callee ids swap."""
        self.caller_id_name, self.callee_id_name = self.callee_id_name, self.caller_id_name
        self.caller_id_number, self.callee_id_number = (
            self.callee_id_number,
            self.caller_id_number,
        )

    def headers(self, prefix: str, into: Headers, *, index: bool) -> None:
        p = prefix
        into[f"{p}-Direction"] = self.direction
        into[f"{p}-Logical-Direction"] = self.logical_direction or self.direction
        into[f"{p}-Dialplan"] = self.dialplan.lower()
        # FreeSWITCH leaves out the profile fields that are empty.
        for name, value in (
            ("Caller-ID-Name", self.caller_id_name),
            ("Caller-ID-Number", self.caller_id_number),
            ("Orig-Caller-ID-Name", self.orig_caller_id_name),
            ("Orig-Caller-ID-Number", self.orig_caller_id_number),
            ("Callee-ID-Name", self.callee_id_name),
            ("Callee-ID-Number", self.callee_id_number),
            ("ANI", self.ani),
            ("Destination-Number", self.destination_number),
        ):
            if value:
                into[f"{p}-{name}"] = value
        into[f"{p}-Unique-ID"] = self.unique_id
        into[f"{p}-Source"] = self.source
        if index and self.transfer_source:
            into[f"{p}-Transfer-Source"] = self.transfer_source
        into[f"{p}-Context"] = self.context
        into[f"{p}-Channel-Name"] = self.channel_name
        if index:
            into[f"{p}-Profile-Index"] = str(self.index)
        for name in _PROFILE_TIMES:
            into[f"{p}-{name}"] = str(self.times.get(name, 0))
        into[f"{p}-Screen-Bit"] = "true"
        into[f"{p}-Privacy-Hide-Name"] = "false"
        into[f"{p}-Privacy-Hide-Number"] = "false"


App = Callable[["Channel", str, "Message"], Awaitable[str]]


class Hangup(Exception):
    """Raised inside an application when its channel hangs up under it."""


class Channel:
    """One simulated FreeSWITCH channel (a call leg).

    Public attributes a test may read: ``uuid``, ``name``, ``direction``, ``state``
    (``CS_*``), ``call_state``, ``answer_state``, ``variables``, ``hangup_cause``,
    ``dtmf_received`` (digits delivered to it), ``applications`` (app names run, in order),
    ``bridged_to`` (the other channel's uuid while bridged), and ``done``: an awaitable
    that completes when the channel is destroyed.
    """

    def __init__(
        self,
        sim: FreeSwitchSimulator,
        *,
        name: str,
        direction: str,
        caller_id_name: str,
        caller_id_number: str,
        destination: str,
        context: str = "default",
        source: str = "mod_loopback",
        channel_uuid: str | None = None,
        variables: dict[str, str] | None = None,
        callee: tuple[str, str] = ("", ""),
    ) -> None:
        self.sim = sim
        self.uuid = channel_uuid or str(uuidlib.uuid4())
        self.name = name
        self.direction = direction
        self.state = "CS_NONE"
        self.call_state = "DOWN"
        self.answer_state = "ringing"
        self.hangup_cause: str | None = None
        self.hit_dialplan = False
        created = now_us()
        self.profile = Profile(
            direction=direction,
            caller_id_name=caller_id_name,
            caller_id_number=caller_id_number,
            destination_number=destination,
            channel_name=name,
            unique_id=self.uuid,
            context=context,
            source=source,
            callee_id_name=callee[0],
            callee_id_number=callee[1],
            times={"Profile-Created-Time": created, "Channel-Created-Time": created},
        )
        sim.session_counter += 1
        self.variables: dict[str, str] = {
            "direction": direction,
            "uuid": self.uuid,
            "session_id": str(sim.session_counter),
            "channel_name": name,
            "read_codec": "L16",
            "read_rate": "8000",
            "write_codec": "L16",
            "write_rate": "8000",
        }
        if direction == "outbound":
            self.variables["is_outbound"] = "true"
        if variables:
            self.variables.update(variables)
        self.other: Channel | None = None
        self.other_type = "originatee"
        self.peer: Channel | None = None  # the other half of a loopback pair
        self.bridged_to: str | None = None
        self.applications: list[str] = []
        self.dtmf_received: list[str] = []
        self._dtmf: deque[str] = deque()
        self._dtmf_arrived = asyncio.Event()
        self._messages: asyncio.Queue[Message | None] = asyncio.Queue()
        self._hungup = asyncio.Event()
        self._parks: list[asyncio.Event] = []  # nested park loops, innermost last
        self._takeover: Callable[[], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._answered = asyncio.Event()
        self._progress = asyncio.Event()  # ringing, early media or answered
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.listeners: list[Callable[[Channel], None]] = []
        #: variables ``export`` set: they are copied onto legs this channel bridges to.
        self.exported: dict[str, str] = {}

    # -- read-only views ------------------------------------------------------------
    @property
    def answered(self) -> bool:
        return self._answered.is_set()

    @property
    def hungup(self) -> bool:
        return self._hungup.is_set()

    def __repr__(self) -> str:
        return f"<Channel {self.name} {self.uuid} {self.state} {self.answer_state}>"

    # -- events -----------------------------------------------------------------------
    def data(self, into: Headers, *, with_variables: bool) -> None:
        """Append the channel data block FreeSWITCH puts on every channel event."""
        into["Channel-State"] = self.state
        into["Channel-Call-State"] = self.call_state
        into["Channel-State-Number"] = str(STATE_NUMBERS[self.state])
        into["Channel-Name"] = self.name
        into["Unique-ID"] = self.uuid
        into["Call-Direction"] = self.direction
        into["Presence-Call-Direction"] = self.direction
        into["Channel-HIT-Dialplan"] = "true" if self.hit_dialplan else "false"
        into["Channel-Call-UUID"] = self.variables.get("call_uuid", self.uuid)
        into["Answer-State"] = self.answer_state
        if self.hangup_cause is not None:
            into["Hangup-Cause"] = self.hangup_cause
        into["Channel-Read-Codec-Name"] = "L16"
        into["Channel-Read-Codec-Rate"] = "8000"
        into["Channel-Read-Codec-Bit-Rate"] = "128000"
        into["Channel-Write-Codec-Name"] = "L16"
        into["Channel-Write-Codec-Rate"] = "8000"
        into["Channel-Write-Codec-Bit-Rate"] = "128000"
        self.profile.headers("Caller", into, index=True)
        if self.other is not None:
            into["Other-Type"] = self.other_type
            self.other.profile.headers("Other-Leg", into, index=False)
        if with_variables:
            for name, value in self.variables.items():
                into["variable_" + name] = value

    def fire(
        self,
        name: str,
        pre: Headers | None = None,
        post: Headers | None = None,
        *,
        calling: tuple[str, str, str] | None = None,
    ) -> None:
        """Fire a channel event: common headers, ``pre``, channel data, ``post``."""
        if not self.sim.wants(name):
            return
        headers = self.sim.identity.common(name, calling=calling)
        if pre:
            headers.update(pre)
        self.data(headers, with_variables=name in _WITH_VARIABLES)
        if post:
            headers.update(post)
        self.sim.emit(headers, channel_uuid=self.uuid)

    def set_state(self, state: str) -> None:
        self.state = state
        self.fire("CHANNEL_STATE")

    def set_call_state(self, call_state: str) -> None:
        original, self.call_state = self.call_state, call_state
        pre = {
            "Original-Channel-Call-State": original,
            "Channel-Call-State-Number": str(CALL_STATE_NUMBERS.get(call_state, 0)),
        }
        self.fire("CHANNEL_CALLSTATE", pre)

    def mark_ring_ready(self) -> None:
        if self.profile.times.get("Channel-Progress-Time") or self.answer_state != "ringing":
            return
        self.profile.times["Channel-Progress-Time"] = now_us()
        self._progress.set()
        self.fire("CHANNEL_PROGRESS")
        if self.call_state != "RINGING":
            self.set_call_state("RINGING")

    def mark_pre_answered(self) -> None:
        if self.answer_state in ("early", "answered"):
            return
        self.profile.times["Channel-Progress-Media-Time"] = now_us()
        self._progress.set()
        self.answer_state = "early"
        self.fire("CHANNEL_PROGRESS_MEDIA")
        self.set_call_state("EARLY")

    def mark_answered(self) -> None:
        if self.answered or self.hungup:
            return
        self.profile.times["Channel-Answered-Time"] = now_us()
        self.answer_state = "answered"
        self._answered.set()
        self._progress.set()
        self.fire("CHANNEL_ANSWER")
        self.set_call_state("ACTIVE")
        if self.peer is not None and not self.peer.answered:
            # A loopback pair: answering one half answers the other, which flips its
            # caller id (CALL_UPDATE), as mod_loopback does.
            self.peer.mark_answered()
            self.peer.profile.flip()
            self.peer.variables["channel_cid_flipped"] = "yes"
            self.peer.hit_dialplan = True
            self.peer.fire("CALL_UPDATE", {"Direction": "RECV"})

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run the channel's thread: ``body`` (dialplan, originate...), then hang up."""
        if self.hungup:
            return
        self.sim.channels[self.uuid] = self
        self._task = asyncio.get_running_loop().create_task(
            self._run(body), name=f"channel {self.uuid}"
        )

    async def _run(self, body: Callable[[], Awaitable[None]]) -> None:
        try:
            with contextlib.suppress(Hangup):
                await body()
                while self._takeover is not None and not self.hungup:
                    takeover, self._takeover = self._takeover, None
                    await takeover()
            if not self.hungup:
                # Nothing left to run: FreeSWITCH hangs the channel up.
                self.hangup("NORMAL_CLEARING")
            # A real session needs a moment between CHANNEL_HANGUP and its teardown
            # (media threads stop, the state machine runs): uuid_* commands sent in
            # that window still find the channel, as they do on FreeSWITCH.
            await asyncio.sleep(self.sim.teardown_seconds)
        except asyncio.CancelledError:
            if not self.hungup:
                self.hangup("MANAGER_REQUEST")
        except Exception:
            # A broken application (a custom one, a bad argument) must not leave the
            # call hanging silently: it is logged and the call fails.
            logger.exception("channel %s: application failed", self.uuid)
            self.sim.stats["application_errors"] += 1
            if not self.hungup:
                self.hangup("NORMAL_TEMPORARY_FAILURE")
        finally:
            self._teardown()

    async def run_dialplan(self, apps: list[tuple[str, str]]) -> None:
        """Run dialplan applications in order, handling queued messages between them."""
        for app, arg in apps:
            if self.hungup or self._takeover is not None:
                return
            await self.execute(Message(app, arg, event_uuid=str(uuidlib.uuid4())))
            await self.drain_messages()

    async def drain_messages(self) -> None:
        """Run every message already queued (FreeSWITCH parses them between apps)."""
        while not self._messages.empty() and not self.hungup:
            message = self._messages.get_nowait()
            if message is not None:
                await self.execute(message)

    def queue(self, message: Message) -> None:
        self._messages.put_nowait(message)

    async def execute(self, message: Message) -> str:
        """Run one application with CHANNEL_EXECUTE / CHANNEL_EXECUTE_COMPLETE around it."""
        app = message.app
        impl = self.sim.applications.get(app)
        response = ""
        if impl is None:
            # switch_core_session_execute_application: an unknown application hangs
            # the channel up, no CHANNEL_EXECUTE is fired.
            self.sim.log(3, f"Invalid Application {app}", self)
            if message.done is not None and not message.done.done():
                message.done.set_result(None)
            self.hangup("DESTINATION_OUT_OF_ORDER")
            return ""
        try:
            for _ in range(max(1, message.loops)):
                if self.hungup and app != "hangup":
                    break
                self.applications.append(app)
                self.variables.pop("current_application_response", None)
                self.variables["current_application"] = app
                if message.arg:
                    self.variables["current_application_data"] = message.arg
                else:
                    self.variables.pop("current_application_data", None)
                self.fire("CHANNEL_EXECUTE", post=self._app_headers(message))
                try:
                    response = await impl(self, message.arg, message)
                except Hangup:
                    response = self.variables.get("current_application_response", "")
                if response:
                    self.variables["current_application_response"] = response
                post = self._app_headers(message)
                # The response is the channel variable: an app that sets none reports
                # what the last one set (park after a broadcast reports FILE PLAYED).
                post["Application-Response"] = self.variables.get(
                    "current_application_response", "_none_"
                )
                if message.event_uuid:
                    post["Application-UUID"] = post.pop("Application-UUID")
                self.fire("CHANNEL_EXECUTE_COMPLETE", post=post)
            if message.command_headers is not None and self.sim.wants("PRIVATE_COMMAND"):
                private = self.sim.identity.common("PRIVATE_COMMAND")
                self.data(private, with_variables=False)
                self.sim.emit(message.command_headers, channel_uuid=self.uuid, appended=private)
        finally:
            if message.done is not None and not message.done.done():
                message.done.set_result(None)
        return response

    @staticmethod
    def _app_headers(message: Message) -> Headers:
        post: Headers = {"Application": message.app}
        if message.arg:
            post["Application-Data"] = message.arg
        if message.event_uuid:
            post["Application-UUID"] = message.event_uuid
        return post

    def hangup(self, cause: str = "NORMAL_CLEARING") -> bool:
        """Start hanging up; False if the channel was already hanging up."""
        if self.hungup:
            return False
        self.hangup_cause = cause
        if self._task is None:
            # Never started, never announced: nothing to tear down.
            self._hungup.set()
            if not self.done.done():
                self.done.set_result(None)
            return True
        self.answer_state = "hangup"
        self.profile.times["Channel-Hangup-Time"] = now_us()
        self.fire("CHANNEL_HANGUP", post={"Hangup-Cause": cause})
        self._hungup.set()
        self._messages.put_nowait(None)  # wake a parked executor
        for listener in list(self.listeners):
            listener(self)
        if self.peer is not None and not self.peer.hungup:
            self.peer.hangup("NORMAL_CLEARING")
        if self._task is None or self._task.done():
            self._teardown()
        return True

    def _teardown(self) -> None:
        if self.done.done():
            return
        if not self.hungup:
            self.hangup("NORMAL_CLEARING")
            return
        cause = self.hangup_cause or "NORMAL_CLEARING"
        self.set_state("CS_HANGUP")
        self.set_call_state("HANGUP")
        self.variables["hangup_cause"] = cause
        self.variables["hangup_cause_q850"] = str(Q850.get(cause, 16))
        self.set_state("CS_REPORTING")
        if self.sim.wants("CHANNEL_HANGUP_COMPLETE"):
            # FreeSWITCH writes Hangup-Cause twice here: once for the event, once in
            # the channel data (a client parsing it sees a list).
            first = self.sim.identity.common("CHANNEL_HANGUP_COMPLETE")
            first["Hangup-Cause"] = cause
            rest: Headers = {}
            self.data(rest, with_variables=True)
            self.sim.emit(first, channel_uuid=self.uuid, appended=rest)
        self.sim.channel_gone(self)
        self.fire("CHANNEL_DESTROY", post={"Hangup-Cause": cause})
        self.state = "CS_DESTROY"
        self.fire("CHANNEL_STATE", post={"Hangup-Cause": cause})
        self.done.set_result(None)

    async def cancel(self) -> None:
        """Stop the executor task (simulator shutdown)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- waiting helpers for applications -------------------------------------------------
    async def sleep(self, seconds: float) -> None:
        """Sleep like a media loop: raise Hangup at once if the channel hangs up."""
        if self.hungup:
            raise Hangup
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await wait_for(self._hungup.wait(), seconds)
        if self.hungup:
            raise Hangup

    async def wait_hangup(self) -> None:
        await self._hungup.wait()

    async def park(self, *, fire_events: bool = True) -> None:
        """The park loop: run queued messages until hung up, unparked or taken over.

        ``fire_events=False`` is the static outbound socket: the same loop, no
        CHANNEL_PARK/UNPARK.
        """
        if fire_events:
            self.fire("CHANNEL_PARK")
        unpark = asyncio.Event()
        self._parks.append(unpark)
        try:
            await self.serve_messages(unpark)
        finally:
            self._parks.remove(unpark)
            if fire_events:
                self.fire("CHANNEL_UNPARK")

    async def serve_messages(self, stop: asyncio.Event) -> None:
        """Run queued messages as they come until ``stop`` is set or the channel hangs
        up: what a parked or bridged FreeSWITCH channel does between media frames."""
        while not self.hungup and not stop.is_set():
            getter = asyncio.ensure_future(self._messages.get())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                message = getter.result()
                if message is not None:
                    await self.execute(message)

    def unpark(self, *, every: bool = False) -> None:
        """End the innermost park loop (or ``every`` one): uuid_bridge, an outbound
        application that leaves after ``resume``..."""
        for unpark in self._parks if every else self._parks[-1:]:
            unpark.set()
        self._messages.put_nowait(None)

    async def wait_answered(self, timeout: float | None = None, *, ringing: bool = False) -> bool:
        """Wait until answered (or, with ``ringing``, ringing) (True), hung up or
        ``timeout`` elapsed (False)."""
        target = self._progress if ringing else self._answered
        if not target.is_set() and not self.hungup:
            await self._wait_any(target, timeout)
        return target.is_set() and not self.hungup

    def fire_codecs(self, unique_id: str, name: str) -> None:
        """The two CODEC events a new media channel fires, before it has a profile."""
        if not self.sim.wants("CODEC"):
            return
        base: Headers = {
            "Channel-State": "CS_NONE",
            "Channel-Call-State": "DOWN",
            "Channel-State-Number": "0",
            "Channel-Name": name,
            "Unique-ID": unique_id,
            "Call-Direction": self.direction,
            "Presence-Call-Direction": self.direction,
            "Channel-HIT-Dialplan": "true" if self.hit_dialplan else "false",
            "Channel-Call-UUID": unique_id,
            "Answer-State": "ringing",
            "Channel-Read-Codec-Name": "L16",
            "Channel-Read-Codec-Rate": "8000",
            "Channel-Read-Codec-Bit-Rate": "128000",
        }
        read = self.sim.identity.common("CODEC")
        read.update(base)
        read.update(
            {
                "channel-read-codec-name": "L16",
                "channel-read-codec-rate": "8000",
                "channel-read-codec-bit-rate": "128000",
            }
        )
        self.sim.emit(read, channel_uuid=unique_id)
        write = self.sim.identity.common(
            "CODEC",
            calling=("switch_core_codec.c", "switch_core_session_set_write_codec", "450"),
        )
        write.update(base)
        write.update(
            {
                "Channel-Write-Codec-Name": "L16",
                "Channel-Write-Codec-Rate": "8000",
                "Channel-Write-Codec-Bit-Rate": "128000",
                "Channel-Write-codec-bit-rate": "128000",
            }
        )
        self.sim.emit(write, channel_uuid=unique_id)

    def take_over(self, takeover: Callable[[], Awaitable[None]]) -> None:
        """Abandon the dialplan and run ``takeover`` next (what uuid_bridge does)."""
        self._takeover = takeover
        self.unpark()

    # -- DTMF -----------------------------------------------------------------------------
    def receive_dtmf(self, digit: str, duration_ms: int = 2000) -> None:
        """A digit arrives from the far end: DTMF event, and the digit buffer."""
        self.dtmf_received.append(digit)
        self._dtmf.append(digit)
        self._dtmf_arrived.set()
        self.fire(
            "DTMF",
            post={
                "DTMF-Digit": digit,
                "DTMF-Duration": str(duration_ms),
                "DTMF-Source": "UNKNOWN",
            },
        )

    async def next_digit(self, timeout: float) -> str | None:
        """Pop the next buffered digit, waiting up to ``timeout``; Hangup if hung up."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._dtmf:
            if self.hungup:
                raise Hangup
            self._dtmf_arrived.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            await self._wait_any(self._dtmf_arrived, remaining)
        return self._dtmf.popleft()

    async def wait_digit_or_time(self, seconds: float) -> bool:
        """Wait ``seconds`` or until a digit is buffered (True); Hangup if hung up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._dtmf:
            if self.hungup:
                raise Hangup
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._dtmf_arrived.clear()
            await self._wait_any(self._dtmf_arrived, remaining)
        return True

    async def _wait_any(self, event: asyncio.Event, timeout: float | None) -> None:
        waiter = asyncio.ensure_future(event.wait())
        hung = asyncio.ensure_future(self._hungup.wait())
        try:
            await asyncio.wait({waiter, hung}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            waiter.cancel()
            hung.cancel()


def split_args(text: str) -> list[str]:
    """Split an application argument on spaces, keeping quoted ('...') parts whole."""
    return [part.strip("'") for part in re.findall(r"'[^']*'|\S+", text)]
