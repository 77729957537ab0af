"""A minimal FreeSWITCH stand-in for the engine tests, over real TCP on 127.0.0.1.

It answers like mod_event_socket does, with frames shaped exactly as in the 1.10.12 corpus
(events are corpus frames, with only same-length values substituted or bodies re-framed):
``auth`` (``+OK accepted`` / ``-ERR invalid`` + disconnect notice + close), ``api echo X``
(output X), ``api sleep S`` (blocks the connection S seconds, like a blocking api),
``bgapi`` (reply with Job-UUID, then a BACKGROUND_JOB if the subscriptions and filters let
it through), ``event plain``, ``filter`` / ``filter delete``, ``linger``, ``sendmsg``,
``exit``. Commands of one connection are answered one after another, in order.

``FakeCall`` is the other direction: FreeSWITCH's ``socket`` application connecting to an
outbound server and replaying ``outbound_in.bin``.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import cast

from tests.polling import until

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "freeswitch-1.10.12"

AUTH_REQUEST = b"Content-Type: auth/request\n\n"


def split_frames(data: bytes) -> list[bytes]:
    """Cut a capture into whole frames (header block + outer Content-Length body)."""
    frames = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n\n", pos)
        if end < 0:
            break
        head = data[pos:end]
        match = re.search(rb"(?m)^Content-Length: (\d+)$", head)
        stop = end + 2 + (int(match.group(1)) if match else 0)
        frames.append(data[pos:stop])
        pos = stop
    return frames


def reply(text: str, extra: str = "") -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n{extra}\n".encode()


def api_response(body: str) -> bytes:
    raw = body.encode()
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(raw) + raw


def event_frame(inner_headers: bytes, body: bytes | None = None) -> bytes:
    """A text/event-plain frame as FreeSWITCH writes it (inner Content-Length for a body)."""
    inner = inner_headers.rstrip(b"\n") + b"\n"
    if body is not None:
        inner += b"Content-Length: %d\n\n" % len(body) + body
    else:
        inner += b"\n"
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(inner) + inner


@functools.cache
def plain_frames() -> list[bytes]:
    """plain.bin cut into frames (read once per test session)."""
    return split_frames((CORPUS / "plain.bin").read_bytes())


def event_frames() -> list[bytes]:
    """The text/event-plain frames of plain.bin, in order."""
    return [f for f in plain_frames() if b"Content-Type: text/event-plain" in f.split(b"\n\n")[0]]


@functools.cache
def corpus_event(name: str, index: int = 0) -> bytes:
    """The index-th plain.bin event frame whose first Event-Name is ``name``."""
    found = [f for f in plain_frames() if f"\n\nEvent-Name: {name}\n".encode() in f]
    return found[index]


def _event_parts(frame: bytes) -> tuple[bytes, bytes | None]:
    """Split an event frame into its inner header block and its inner body."""
    inner = frame[frame.find(b"\n\n") + 2:]
    head_end = inner.find(b"\n\n")
    head = inner[:head_end]
    match = re.search(rb"\nContent-Length: (\d+)$", head)
    if match is None:
        return head, None
    return head[: match.start()], inner[head_end + 2:]


def background_job(job_uuid: str, output: str) -> bytes:
    """The corpus BACKGROUND_JOB with this Job-UUID and job output."""
    head, _body = _event_parts(corpus_event("BACKGROUND_JOB"))
    head = re.sub(rb"(?m)^Job-UUID: .*$", f"Job-UUID: {job_uuid}".encode(), head)
    return event_frame(head, output.encode())


class Connection(asyncio.Protocol):
    """One client connection to the fake server."""

    def __init__(self, server: ESLServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.events: set[str] = set()
        self.filters: list[tuple[str, str]] = []
        self.authed = False
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: cast, never assert.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.append(self)
        if self.server.send_auth_request:
            transport.write(AUTH_REQUEST)
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\n\n")
            if end < 0:
                return
            frame, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            match = re.search(rb"(?mi)^content-length: (\d+)$", frame)
            if match:  # sendmsg with a body
                size = int(match.group(1))
                frame += b"\n\n" + self.buffer[:size]
                self.buffer = self.buffer[size:]
            self.server.received.append(frame)
            self.queue.put_nowait(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def wants(self, name: str, headers: dict[str, str]) -> bool:
        """FreeSWITCH's delivery rule: subscribed, and (if filters exist) one matches."""
        if "ALL" not in self.events and name not in self.events:
            return False
        if not self.filters:
            return True
        return any(headers.get(h, "").lower() == v.lower() for h, v in self.filters)

    async def _serve(self) -> None:
        while True:
            frame = await self.queue.get()
            text = frame.decode(errors="replace")
            handled = self.server.on_command(self, text) if self.server.on_command else False
            if not handled:
                await self._answer(text)

    async def _answer(self, text: str) -> None:
        line, _, rest = text.partition("\n")
        word, _, arg = line.partition(" ")
        word = word.lower()
        if word == "auth":
            if arg == self.server.password:
                self.authed = True
                self.write(reply("+OK accepted"))
            else:
                self.write(reply("-ERR invalid"))
                self.write(b"Content-Type: text/disconnect-notice\nContent-Length: 13\n\n"
                           b"Disconnected.")
                self.close()
        elif word == "api":
            cmd, _, api_arg = arg.partition(" ")
            if cmd == "sleep":
                await asyncio.sleep(float(api_arg))
                self.write(api_response("+OK slept\n"))
            elif cmd == "echo":
                self.write(api_response(api_arg))
            else:
                missing = f"-ERR {cmd} Command not found!\n"
                self.write(api_response(self.server.api.get(arg, missing)))
        elif word == "bgapi":
            job = re.search(r"(?m)^Job-UUID: (.*)$", rest)
            job_uuid = job.group(1) if job else "00000000-0000-0000-0000-000000000000"
            self.write(reply(f"+OK Job-UUID: {job_uuid}", f"Job-UUID: {job_uuid}\n"))
            cmd, _, bg_arg = arg.partition(" ")
            output = bg_arg if cmd == "echo" else f"+OK {arg}\n"
            if self.wants("BACKGROUND_JOB", {"Job-UUID": job_uuid, "Event-Name": "BACKGROUND_JOB"}):
                self.write(background_job(job_uuid, output))
        elif word == "event":
            words = arg.split()
            self.events.update(w.upper() for w in words[1:] if "::" not in w)
            self.write(reply("+OK event listener enabled plain"))
        elif word == "filter":
            parts = arg.split(" ", 2)
            if parts[0] == "delete":
                key = (parts[1], parts[2] if len(parts) > 2 else "")
                if key in self.filters:
                    self.filters.remove(key)
                self.write(reply(f"+OK filter deleted. [{key[0]}]=[{key[1]}]"))
            else:
                header, _, value = arg.partition(" ")
                self.filters.append((header, value))
                self.write(reply(f"+OK filter added. [{header}]=[{value}]"))
        elif word == "linger":
            self.write(reply("+OK will linger"))
        elif word == "sendmsg":
            self.write(reply("+OK"))
        elif word == "exit":
            self.write(reply("+OK bye"))
            self.write(b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n"
                       b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n")
            self.close()
        else:
            self.write(reply("-ERR command not found"))


class ESLServer:
    """The fake inbound server: ``port = await server.start()``; ``await server.stop()``."""

    def __init__(self, password: str = "ClueCon", *, send_auth_request: bool = True) -> None:
        self.password = password
        self.send_auth_request = send_auth_request
        self.api: dict[str, str] = {}
        self.received: list[bytes] = []
        self.connections: list[Connection] = []
        self.on_command: Callable[[Connection, str], bool] | None = None
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def commands(self) -> list[str]:
        return [f.decode(errors="replace") for f in self.received]

    def broadcast(self, frame: bytes) -> None:
        for conn in self.connections:
            conn.write(frame)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        await until(predicate, timeout)


OUTBOUND_FRAMES = split_frames((CORPUS / "outbound_in.bin").read_bytes())
"""outbound_in.bin cut into frames: [0] connect reply, [6:20] events, [20] linger notice,
[21] +OK bye, [22] the final disconnect notice."""
OUTBOUND_UUID = "72519dc4-2261-40b9-875c-dd65a58ee69f"


class FakeCall(asyncio.Protocol):
    """FreeSWITCH's ``socket`` application calling an outbound server, corpus bytes only.

    Answers connect (the corpus CHANNEL_DATA reply), filter, event, myevents, linger; each
    ``sendmsg execute`` gets ``+OK`` then the corpus CHANNEL_EXECUTE and
    CHANNEL_EXECUTE_COMPLETE with this message's Event-UUID as Application-UUID. A
    ``hangup`` execute plays the corpus ending: CHANNEL_HANGUP, the linger notice (with
    linger) or the disconnect notice (without), CHANNEL_HANGUP_COMPLETE.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.received: list[str] = []
        self.lingering = False
        self.closed = asyncio.get_running_loop().create_future()
        self.complete_executes = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: cast, never assert.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\n\n")) >= 0:
            frame, self.buffer = self.buffer[:end].decode(), self.buffer[end + 2:]
            self.received.append(frame)
            self._answer(frame)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(data)

    @staticmethod
    def _with_app_uuid(frame: bytes, app_uuid: str) -> bytes:
        return re.sub(rb"(?m)^Application-UUID: .{36}$",
                      f"Application-UUID: {app_uuid}".encode(), frame)

    def _answer(self, frame: str) -> None:
        line = frame.split("\n", 1)[0]
        word = line.split(" ", 1)[0]
        if word == "connect":
            self.write(OUTBOUND_FRAMES[0])
        elif word == "filter":
            self.write(reply(f"+OK filter added. [{line.split(' ')[1]}]=[{line.split(' ')[2]}]"))
        elif word == "event":
            self.write(reply("+OK event listener enabled plain"))
        elif word == "myevents":
            self.write(OUTBOUND_FRAMES[1])
        elif word == "linger":
            self.lingering = True
            self.write(OUTBOUND_FRAMES[2])
        elif word == "sendmsg":
            self.write(OUTBOUND_FRAMES[3])
            app = re.search(r"(?m)^execute-app-name: (.*)$", frame)
            app_uuid = re.search(r"(?m)^Event-UUID: (.*)$", frame)
            if app is None or app_uuid is None:
                return
            if app.group(1) == "hangup":
                self.write(self._with_app_uuid(OUTBOUND_FRAMES[12], app_uuid.group(1)))
                self.hangup()
                return
            self.write(self._with_app_uuid(OUTBOUND_FRAMES[7], app_uuid.group(1)))
            if self.complete_executes:
                self.write(self._with_app_uuid(OUTBOUND_FRAMES[9], app_uuid.group(1)))
        elif word == "exit":
            self.write(OUTBOUND_FRAMES[21])
            self.write(OUTBOUND_FRAMES[22])
            assert self.transport is not None
            self.transport.close()
        else:
            self.write(reply("-ERR command not found"))

    def hangup(self) -> None:
        """The corpus ending of the call: hangup, (linger notice), hangup complete."""
        self.write(OUTBOUND_FRAMES[13])  # CHANNEL_HANGUP
        if self.lingering:
            self.write(OUTBOUND_FRAMES[20])  # Content-Disposition: linger
            self.write(OUTBOUND_FRAMES[19])  # CHANNEL_HANGUP_COMPLETE
        else:
            self.write(OUTBOUND_FRAMES[22])
            assert self.transport is not None
            self.transport.close()
