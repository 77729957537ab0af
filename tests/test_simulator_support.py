"""A raw Event Socket client for the simulator tests (no engine: bytes in, frames out).

The simulator is the test bed of the engine, so its own tests talk to it with nothing but
asyncio streams and the sans-I/O Parser: a bug in the engine cannot hide one here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from genesis.protocol.parser import (
    KIND_API_RESPONSE,
    KIND_COMMAND_REPLY,
    KIND_EVENT,
    ESLEvent,
    Parser,
)
from genesis.testing import FreeSwitchSimulator

TIMEOUT = 5.0


class Esl:
    """One TCP connection: replies in a FIFO, events and other frames in lists."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = Parser()
        self.frames: list[ESLEvent] = []
        self.events: list[ESLEvent] = []
        self.replies: asyncio.Queue[ESLEvent] = asyncio.Queue()
        self.raw = bytearray()
        self._changed = asyncio.Event()
        self.eof = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, fs: FreeSwitchSimulator, password: str | None = "ClueCon") -> Esl:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(fs.host, fs.port), TIMEOUT)
        client = cls(reader, writer)
        if password is not None:
            await client.wait_for(lambda f: f.content_type == "auth/request", frames=True)
            reply = await client.send(f"auth {password}")
            assert reply["Reply-Text"] == "+OK accepted"
        return client

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(1 << 16)
                if not data:
                    break
                self.raw += data
                for message in self.parser.feed(data):
                    self.frames.append(message)
                    if message.kind == KIND_EVENT:
                        self.events.append(message)
                    elif message.kind in (KIND_COMMAND_REPLY, KIND_API_RESPONSE):
                        self.replies.put_nowait(message)
                self._changed.set()
        finally:
            self.eof.set()
            self._changed.set()

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def send(
        self,
        command: str,
        headers: dict[str, str] | None = None,
        body: str | None = None,
        timeout: float = TIMEOUT,
    ) -> ESLEvent:
        text = command + "\n"
        for name, value in (headers or {}).items():
            text += f"{name}: {value}\n"
        raw = text.encode()
        if body is not None:
            data = body.encode()
            raw += b"Content-Length: %d\n\n" % len(data) + data
        else:
            raw += b"\n"
        self.writer.write(raw)
        await self.writer.drain()
        return await asyncio.wait_for(self.replies.get(), timeout)

    async def api(self, command: str, timeout: float = TIMEOUT) -> str:
        reply = await self.send("api " + command, timeout=timeout)
        assert reply.content_type == "api/response"
        return reply.body or ""

    async def wait_for(
        self,
        predicate: Callable[[ESLEvent], bool],
        *,
        frames: bool = False,
        count: int = 1,
        timeout: float = TIMEOUT,
    ) -> list[ESLEvent]:
        """Wait until ``count`` received events (or frames) satisfy ``predicate``."""

        async def wait() -> list[ESLEvent]:
            while True:
                pool = self.frames if frames else self.events
                found = [m for m in pool if predicate(m)]
                if len(found) >= count:
                    return found
                if self.eof.is_set():
                    raise AssertionError(f"connection closed with {len(found)}/{count} matches")
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(wait(), timeout)

    async def event(self, name: str, timeout: float = TIMEOUT, **headers: str) -> ESLEvent:
        def match(event: ESLEvent) -> bool:
            return event.name == name and all(
                event.get(key.replace("_", "-")) == value for key, value in headers.items()
            )

        return (await self.wait_for(match, timeout=timeout))[0]

    def names(self, uuid: str) -> list[str]:
        return [e.name or "" for e in self.events if e.get("Unique-ID") == uuid]

    async def closed(self, timeout: float = TIMEOUT) -> None:
        await asyncio.wait_for(self.eof.wait(), timeout)

    async def close(self) -> None:
        self.writer.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self._task
