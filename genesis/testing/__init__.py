r"""genesis.testing: a FreeSWITCH simulator that speaks the real Event Socket protocol.

Nobody can run FreeSWITCH inside a unit test. :class:`FreeSwitchSimulator` is the next
best thing: a TCP server on loopback that behaves, byte for byte where it matters, like
FreeSWITCH 1.10's mod_event_socket. It authenticates, subscribes (plain, json, xml),
filters, runs ``api``/``bgapi`` commands, fires channel events in the order FreeSWITCH
fires them (checked against captures of a real FreeSWITCH), runs dialplan applications
sent with ``sendmsg``, and connects calls to *outbound* socket applications. Code tested
against it runs against FreeSWITCH unchanged.

Quick start::

    from genesis.testing import FreeSwitchSimulator

    async with FreeSwitchSimulator(host="127.0.0.1", port=0, password="ClueCon") as fs:
        fs.host, fs.port                                   # the bound address
        fs.endpoint("user/1001", answer_after=0.5)         # answers after 0.5 s of ringing
        fs.endpoint("user/1002", busy=True)                # USER_BUSY
        fs.endpoint("user/1003", ring_forever=True)        # NO_ANSWER when originate times out
        fs.endpoint("user/1004", fail="CALL_REJECTED")     # fails with that cause
        fs.endpoint("user/1005", answer_after=0.2, digits="1#")  # the far end presses 1 then #
        fs.endpoint("user/1006", answer_after=1, ringing=False)  # no 180: silent until answer
        fs.endpoint(r"^user/2\d{3}$", answer_after=0.1, hangup_after=2)  # a whole range
        fs.route("5000", socket="127.0.0.1:9000 async full")     # extension -> outbound socket
        fs.route("6000", apps=["answer", "playback ivr/welcome.wav", "hangup"])
        call = await fs.place_call(destination="5000", caller="1000", digits="2")
        await call.done                                    # the inbound call ended

Destinations (``originate``, ``bridge``):

- ``user/<n>``: behaves as declared with :meth:`FreeSwitchSimulator.endpoint` (a
  declaration starting with ``^`` is a regular expression covering many users); an
  undeclared user gives ``USER_NOT_REGISTERED`` like an unregistered phone.
- ``loopback/<extension>[/<context>]``: mod_loopback's pair of legs, ``-a`` (returned by
  originate) and ``-b`` (runs the dialplan: the built-in ``park`` extension answers and
  parks, ``echo`` answers and echoes; ``fs.route`` adds more).
- ``error/<CAUSE>``: fails at once with that cause.
- anything else: ``fs.default_endpoint`` (answers at once unless changed).

Dial strings take ``{var=value,...}`` and ``[var=value]`` prefixes; ``origination_uuid``,
``origination_caller_id_name/number``, ``originate_timeout``, ``leg_timeout`` and
``return_ring_ready`` are honoured (with it originate succeeds at the first ring and the
leg runs its application while ringing; as on FreeSWITCH the originate timeout no longer
applies to it, so a ``ring_forever`` endpoint rings until someone hangs it up).
``a,b`` rings destinations together (the first to answer wins, the others hang up with
LOSE_RACE), ``a|b`` one after the other.
Originate's default timeout is 60 s, as in FreeSWITCH: give ``{originate_timeout=1}`` to
make NO_ANSWER fast in a test.

Outbound mode: a route with ``socket="host:port [async] [full]"`` connects the call to
the application, which must send ``connect`` first (the reply is the channel's data, as
FreeSWITCH sends it). ``async`` parks the call while the application drives it (the park
starts once it subscribes or acts); without it each ``sendmsg`` execute runs inline and
its reply waits for the end. Without ``full``, ``api``, ``bgapi``, ``event``, ``linger``,
``log`` and ``sendevent`` are refused. When the call hangs up the application gets the
disconnect notice (after the linger notice and the last events when it asked for
``linger``); when the application leaves, the call is hung up unless it sent ``resume``.

Timing knobs, all short by default so tests stay fast: ``fs.playback_seconds`` (every
playback; default 0.2 s), ``fs.file_durations[path] = seconds`` (one file),
``fs.teardown_seconds`` (from CHANNEL_HANGUP to the teardown events; 0.05 s),
``FreeSwitchSimulator(heartbeat=...)`` (HEARTBEAT interval, default 20 s),
``auth_timeout`` (25 s).

What a test can inspect: ``fs.channels`` (live channels by uuid; each a
:class:`Channel` with ``state``, ``answer_state``, ``variables``, ``applications``,
``dtmf_received``, ``hangup_cause``, ``done``), ``fs.calls`` (every call placed or
originated, in order), ``fs.stats`` (counters: ``connections``, ``commands``, ``api``,
``bgapi``, ``events``, ``originated``, ``auth_failures``, ``events_dropped``,
``listeners_killed``, ...), ``fs.listeners`` (open connections).

Faults (``fs.faults``), each firing once on the next frame any connection writes:
``close_mid_frame()``, ``stall(seconds)``, ``garbage(data)``; and for replies
``delay_replies(seconds)`` (until ``clear()``), ``drop_replies(count)``. A client that
reads too slowly meets FreeSWITCH's own rule: past ``max_queue`` queued events new ones
are dropped, and after 500 consecutive drops the connection is killed.

Load: ``await fs.firehose(count)`` fires realistic events (or recorded ones) as fast as
the subscribed clients read them; ``await fs.replay(data)`` streams recorded bytes.

Extending: ``fs.applications[name] = coroutine`` adds a dialplan application
(``async def app(channel, argument, message) -> str``) and ``fs.apis.register(name,
coroutine)`` an API command (``async def api(fs, arguments) -> str``).

From the command line: ``python -m genesis.testing --host 127.0.0.1 --port 8021
--password ClueCon [--endpoint user/1001=0.5 ...] [--route "5000=127.0.0.1:9000 async
full" ...]`` (it prints the address it listens on, and stops on SIGINT/SIGTERM). In
pytest: the ``freeswitch`` fixture (see :mod:`genesis.testing.plugin`).
"""

from __future__ import annotations

from genesis.testing.channels import Channel, Message
from genesis.testing.faults import Faults
from genesis.testing.server import Endpoint, FreeSwitchSimulator, Route

__all__ = ["Channel", "Endpoint", "Faults", "FreeSwitchSimulator", "Message", "Route"]
