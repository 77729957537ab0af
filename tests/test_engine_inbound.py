"""Inbound over real TCP against tests/esl_server.py: commands, auth, failures, reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator

import pytest

from genesis.exceptions import (
    AuthenticationError,
    CommandStage,
    ConnectionError,
    ConnectionLost,
    ConnectionTimeoutError,
    GenesisError,
    UnconnectedError,
)
from genesis.inbound import Gap, Inbound
from genesis.protocol.parser import KIND_API_RESPONSE, KIND_COMMAND_REPLY
from tests.esl_server import AUTH_REQUEST, ESLServer, corpus_event, reply


@pytest.fixture
async def client(server: ESLServer) -> AsyncIterator[Inbound]:
    async with Inbound("127.0.0.1", server.port, "ClueCon", timeout=2) as conn:
        yield conn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_send_returns_reply_and_api_output(client: Inbound, server: ESLServer) -> None:
    assert client.is_connected and client.writer is not None
    assert client.peer == ("127.0.0.1", server.port)
    reply_ = await client.send("api echo hello world", timeout=2)
    assert reply_.kind == KIND_API_RESPONSE and reply_.body == "hello world"
    assert await client.api("echo 42", timeout=2) == "42"
    err = await client.send("no_such_command", timeout=2)  # -ERR is returned, not raised
    assert err.kind == KIND_COMMAND_REPLY and err["Reply-Text"] == "-ERR command not found"
    assert server.commands()[0] == "auth ClueCon"


async def test_thousand_concurrent_sends_from_hundred_tasks(client: Inbound) -> None:
    async def worker(w: int) -> list[tuple[str, str]]:
        out = []
        for i in range(10):
            token = f"{w}-{i}-{random.random()}"
            out.append((token, await client.api(f"echo {token}", timeout=10)))
            if i % 3 == 0:
                await asyncio.sleep(0)
        return out

    results = await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(100))), 30)
    pairs = [p for r in results for p in r]
    assert len(pairs) == 1000
    assert all(sent == got for sent, got in pairs)


async def test_timed_out_command_late_reply_goes_nowhere(client: Inbound) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await client.send("api sleep 0.3", timeout=0.05)
    # Written after the slow one: the server answers it after the late reply, which must
    # be dropped with the abandoned slot, not handed to this caller.
    assert await client.api("echo mine", timeout=2) == "mine"
    assert await client.api("echo next", timeout=2) == "next"


async def test_cancelled_caller_keeps_fifo_aligned(client: Inbound) -> None:
    slow = asyncio.ensure_future(client.send("api sleep 0.2"))
    await asyncio.sleep(0.02)
    slow.cancel()
    results = await asyncio.gather(*(client.api(f"echo {i}", timeout=3) for i in range(20)))
    assert results == [str(i) for i in range(20)]


@pytest.mark.parametrize(
    "command",
    ["api echo a\n\napi echo b", "api echo a\r\n", "api echo\rx", "", "   ", "status\n"],
)
async def test_injection_refused_before_writing(
    client: Inbound, server: ESLServer, command: str
) -> None:
    before = len(server.received)
    with pytest.raises(ValueError):
        await client.send(command)
    with pytest.raises(ValueError):
        await client.bgapi(command)
    # An argument may be blank, never multi-line.
    bad_line = command if ("\n" in command or "\r" in command) else "x\n\ny"
    with pytest.raises(ValueError):
        await client.sendmsg("execute", "playback", bad_line, uuid="abc")
    with pytest.raises(ValueError):
        await client.sendmsg("execute", "playback", "x", uuid="abc", headers={"X-Var": bad_line})
    with pytest.raises(ValueError):
        await client.sendmsg("execute", bad_line, "x", uuid="abc")
    with pytest.raises(ValueError):
        await client.sendmsg("execute", "playback", "x", uuid=bad_line)
    await asyncio.sleep(0.05)
    assert len(server.received) == before
    assert await client.api("echo still in sync", timeout=2) == "still in sync"


async def test_server_closes_mid_frame_fails_pending_with_stage(server: ESLServer) -> None:
    def cut(conn: object, text: str) -> bool:
        if text.startswith("api cut"):
            conn.write(b"Content-Type: api/response\nContent-Length: 100\n\npartial")  # type: ignore[attr-defined]
            conn.transport.close()  # type: ignore[attr-defined]
            return True
        return False

    server.on_command = cut
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    await client.start()
    pending = [asyncio.ensure_future(client.send(f"api {w}")) for w in ("cut", "echo 1")]
    done, _ = await asyncio.wait(pending, timeout=5)
    assert len(done) == 2
    for task in pending:
        exc = task.exception()
        assert isinstance(exc, ConnectionLost)
        assert exc.stage is CommandStage.UNCONFIRMED
        assert "middle of a frame" in str(exc)
    assert not client.is_connected
    with pytest.raises(ConnectionLost) as info:
        await client.send("api echo late")
    assert info.value.stage is CommandStage.NOT_SENT
    with pytest.raises(ConnectionLost):
        await client.wait_closed()
    await client.stop()


async def test_protocol_error_closes_loudly_and_delivers_earlier_replies(server: ESLServer) -> None:
    def bad(conn: object, text: str) -> bool:
        if text.startswith("api bad"):
            conn.write(api_ok := b"Content-Type: api/response\nContent-Length: 2\n\nok"  # type: ignore[attr-defined]
                       + b"Content-Length: x1\n\n")
            del api_ok
            return True
        return False

    server.on_command = bad
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    await client.start()
    first = asyncio.ensure_future(client.send("api bad"))
    second = asyncio.ensure_future(client.send("api echo never"))
    await asyncio.wait([first, second], timeout=5)
    assert first.result().body == "ok"
    exc = second.exception()
    assert isinstance(exc, ConnectionLost) and "protocol error" in str(exc)
    # The connection's end names the error too, not "closed by peer": Genesis closed it.
    with pytest.raises(ConnectionLost, match="protocol error: frame Content-Length"):
        await asyncio.wait_for(client.wait_closed(), 5)
    await client.stop()


@pytest.mark.parametrize("frame", [
    b"Content-Type: text/weird\nContent-Length: 5\n\nhello",
    b"Reply-Text: +OK no content type\n\n",
], ids=["unknown", "missing"])
async def test_unknown_frame_with_commands_in_flight_closes_instead_of_shifting_replies(
    server: ESLServer, frame: bytes,
) -> None:
    """Replies are matched in order: a frame that may be the first command's reply
    cannot be skipped, or the second command's reply would go to the first."""
    def answer(conn: object, text: str) -> bool:
        if text == "api one":
            conn.write(frame)  # type: ignore[attr-defined]
            return True
        return False

    server.on_command = answer
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    await client.start()
    first = asyncio.ensure_future(client.send("api one"))
    second = asyncio.ensure_future(client.send("api echo two"))
    done, _ = await asyncio.wait([first, second], timeout=5)
    assert len(done) == 2
    for task in (first, second):
        exc = task.exception()
        assert isinstance(exc, ConnectionLost), exc
        assert "unknown Content-Type" in str(exc)
    assert not client.is_connected
    await client.stop()


async def test_unknown_frame_with_no_command_in_flight_is_skipped(server: ESLServer) -> None:
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    await client.start()
    server.broadcast(b"Content-Type: text/weird\nContent-Length: 5\n\nhello")
    await asyncio.sleep(0.05)
    reply = await asyncio.wait_for(client.send("api echo still here"), 5)
    assert reply.kind == KIND_API_RESPONSE
    assert client.is_connected
    await client.stop()


async def test_concurrent_subscribe_succeeds_only_with_the_request_it_joined(
    server: ESLServer,
) -> None:
    """The second caller finds the name in the ledger while the first caller's request is
    unanswered: it must not report success before that request does."""
    def drop(conn: object, text: str) -> bool:
        if text.startswith("event plain"):
            conn.transport.close()  # type: ignore[attr-defined]
            return True
        return False

    server.on_command = drop
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    await client.start()
    first = asyncio.ensure_future(client.subscribe("CHANNEL_ANSWER"))
    second = asyncio.ensure_future(client.subscribe("CHANNEL_ANSWER"))
    results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 5)
    assert all(isinstance(r, ConnectionLost) for r in results), results
    assert "CHANNEL_ANSWER" not in client._events
    await client.stop()


@pytest.mark.parametrize("verb", ["event plain", "filter"])
async def test_concurrent_add_requests_again_when_the_joined_request_is_refused(
    server: ESLServer, verb: str,
) -> None:
    """A second subscribe or add_filter waits for the first one's request; when that is
    refused, it sends its own (and only it succeeds)."""
    refusals = []

    def refuse_once(conn: object, text: str) -> bool:
        if text.startswith(verb) and not refusals:
            refusals.append(text)
            conn.write(reply("-ERR not now"))  # type: ignore[attr-defined]
            return True
        return False

    server.on_command = refuse_once
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    await client.start()
    add = ((lambda: client.subscribe("CHANNEL_ANSWER")) if verb == "event plain"
           else (lambda: client.add_filter("Unique-ID", "abc")))
    first = asyncio.ensure_future(add())
    second = asyncio.ensure_future(add())
    results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 5)
    assert isinstance(results[0], GenesisError) and "not now" in str(results[0])
    assert results[1] is None
    if verb == "event plain":
        assert "CHANNEL_ANSWER" in client._events
    else:
        assert client._filters == {("Unique-ID", "abc"): 1}
    assert sum(f.startswith(verb.encode()) for f in server.received) == 2
    await client.stop()


async def test_malformed_first_frame_fails_start_naming_the_protocol_error() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Content-Type: auth/request\nContent-Length: -1\n\n")
        await reader.read()
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client = Inbound("127.0.0.1", port, "ClueCon", timeout=2)
    with pytest.raises(ConnectionError, match=r"auth/request: protocol error: .*Content-Length"):
        await asyncio.wait_for(client.start(), 5)
    srv.close()
    await srv.wait_closed()


async def test_never_sends_auth_request_start_fails_in_time() -> None:
    server = ESLServer(send_auth_request=False)
    await server.start()
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=0.3)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(ConnectionTimeoutError, match="auth/request"):
        await asyncio.wait_for(client.start(), 3)
    assert loop.time() - t0 < 1.5
    assert not client.is_connected
    await server.stop()


async def test_no_auth_reply_times_out(server: ESLServer) -> None:
    server.on_command = lambda conn, text: text.startswith("auth")
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=0.3)
    with pytest.raises(ConnectionTimeoutError, match="auth reply"):
        await asyncio.wait_for(client.start(), 3)


async def test_wrong_password_raises_authentication_error(server: ESLServer) -> None:
    client = Inbound("127.0.0.1", server.port, "wrong", timeout=2)
    with pytest.raises(AuthenticationError) as info:
        await asyncio.wait_for(client.start(), 3)
    assert "wrong" not in str(info.value)
    assert not client.is_connected


async def test_rude_rejection_is_authentication_error() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Content-Type: text/rude-rejection\nContent-Length: 24\n\n"
                     b"Access Denied, go away.\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    with pytest.raises(AuthenticationError, match="Access Denied"):
        await asyncio.wait_for(Inbound("127.0.0.1", port, timeout=2).start(), 3)
    srv.close()
    await srv.wait_closed()


async def test_connection_refused_is_wrapped() -> None:
    client = Inbound("127.0.0.1", free_port(), timeout=2)
    with pytest.raises(ConnectionError) as info:
        await client.start()
    assert isinstance(info.value.__cause__, OSError)


async def test_connect_timeout() -> None:
    # A loopback listener that never accepts, with its one-slot backlog taken: the kernel
    # drops further SYNs, so the client's handshake can only time out.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.05)
        client = Inbound("127.0.0.1", port, timeout=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectionTimeoutError, match="connecting to"):
            await asyncio.wait_for(client.start(), 3)
        assert loop.time() - started < 1.5
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_unconnected_and_restartable(server: ESLServer) -> None:
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    with pytest.raises(UnconnectedError):
        await client.send("api echo x")
    for round_ in range(3):
        await client.start()
        assert await client.api(f"echo {round_}", timeout=2) == str(round_)
        await client.stop()
        assert not client.is_connected
    assert len(server.connections) == 3


async def test_bgapi_thousands_concurrent(client: Inbound, server: ESLServer) -> None:
    results = await asyncio.wait_for(
        asyncio.gather(*(client.bgapi(f"echo job{i}", timeout=20) for i in range(2000))), 30)
    assert [r.body for r in results] == [f"job{i}" for i in range(2000)]
    assert all(r.name == "BACKGROUND_JOB" for r in results)
    subscriptions = [c for c in server.commands() if c.startswith("event ")]
    assert subscriptions == ["event plain BACKGROUND_JOB"]
    assert not client._jobs


async def test_bgapi_adds_job_filter_when_filtered(client: Inbound, server: ESLServer) -> None:
    await client.add_filter("Unique-ID", "9a78436f-9c2f-414d-80f7-7780cc244392")
    job = "197f90eb-2cc7-4e32-a2c8-7c8a7b596e80"
    result = await client.bgapi("echo filtered", job_uuid=job, timeout=3)
    assert result.body == "filtered" and result["Job-UUID"] == job
    cmds = server.commands()
    assert f"filter Job-UUID {job}" in cmds
    assert cmds.index(f"filter Job-UUID {job}") < next(
        i for i, c in enumerate(cmds) if c.startswith("bgapi"))
    await server.wait_for(lambda: f"filter delete Job-UUID {job}" in server.commands())
    assert client.has_filters  # the user's filter stays


async def test_filters_are_reference_counted(client: Inbound, server: ESLServer) -> None:
    await client.add_filter("Unique-ID", "u1")
    await client.add_filter("Unique-ID", "u1")
    await client.remove_filter("Unique-ID", "u1")
    assert client.has_filters
    await client.remove_filter("Unique-ID", "u1")
    assert not client.has_filters
    cmds = [c for c in server.commands() if c.startswith("filter")]
    assert cmds == ["filter Unique-ID u1", "filter delete Unique-ID u1"]
    with pytest.raises(ValueError):
        await client.remove_filter("Unique-ID", "u1")


async def test_subscribe_is_idempotent_and_custom_last(client: Inbound, server: ESLServer) -> None:
    await client.subscribe("CHANNEL_ANSWER", "sofia::register", "CUSTOM conference::maintenance")
    await client.subscribe("CHANNEL_ANSWER")
    await client.subscribe("channel_answer", "sofia::register")
    await client.subscribe("DTMF")
    cmds = [c for c in server.commands() if c.startswith("event ")]
    assert cmds == [
        "event plain CHANNEL_ANSWER CUSTOM sofia::register conference::maintenance",
        "event plain DTMF",
    ]


async def test_bgapi_connection_lost_after_accept_is_accepted_stage(server: ESLServer) -> None:
    def accept_then_die(conn: object, text: str) -> bool:
        if text.startswith("bgapi"):
            job = text.split("Job-UUID: ")[1].strip()
            conn.write(reply(f"+OK Job-UUID: {job}", f"Job-UUID: {job}\n"))  # type: ignore[attr-defined]
            asyncio.get_running_loop().call_later(0.05, conn.close)  # type: ignore[attr-defined]
            return True
        return False

    server.on_command = accept_then_die
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    await client.start()
    with pytest.raises(ConnectionLost) as info:
        await client.bgapi("originate x", timeout=3)
    assert info.value.stage is CommandStage.ACCEPTED
    await client.stop()


async def test_reconnect_restores_subscriptions_and_filters_and_reports_gap() -> None:
    server = ESLServer()
    port = await server.start()
    gaps: list[Gap] = []
    seen: list[str] = []
    client = Inbound("127.0.0.1", port, "ClueCon", timeout=1, reconnect=True,
                     reconnect_delay=0.05, reconnect_max_delay=0.2, on_gap=gaps.append)
    client.on("CHANNEL_ANSWER", lambda ev: seen.append(ev["Unique-ID"]))
    await client.start()
    await client.subscribe("CHANNEL_ANSWER", "sofia::register")
    await client.add_filter("Unique-ID", "9a78436f-9c2f-414d-80f7-7780cc244392")
    pending = asyncio.ensure_future(client.send("api sleep 5"))
    await server.wait_for(lambda: any(c.startswith("api sleep") for c in server.commands()))
    # FreeSWITCH restarts: the connection drops, the port is closed for a while.
    await server.stop()
    with pytest.raises(ConnectionLost) as info:
        await asyncio.wait_for(pending, 3)
    assert info.value.stage is CommandStage.UNCONFIRMED
    await asyncio.sleep(0.3)
    server2 = ESLServer()
    await server2.start(port)
    await server2.wait_for(lambda: len(server2.received) >= 3, timeout=5)
    await server2.wait_for(lambda: client.is_connected, timeout=5)
    assert server2.commands() == [
        "auth ClueCon",
        "event plain CHANNEL_ANSWER CUSTOM sofia::register",
        "filter Unique-ID 9a78436f-9c2f-414d-80f7-7780cc244392",
    ]  # the in-flight api sleep was not re-sent
    assert len(gaps) == 1 and gaps[0].attempts >= 1 and gaps[0].duration >= 0.3
    server2.broadcast(corpus_event("CHANNEL_ANSWER"))
    await server2.wait_for(lambda: len(seen) == 1)
    assert await client.api("echo back", timeout=2) == "back"
    await client.stop()
    await server2.stop()


async def test_reconnect_gives_up_on_wrong_password() -> None:
    server = ESLServer()
    port = await server.start()
    client = Inbound("127.0.0.1", port, "ClueCon", timeout=1, reconnect=True, reconnect_delay=0.02)
    await client.start()
    await server.stop()
    server2 = ESLServer(password="changed")
    await server2.start(port)
    with pytest.raises(AuthenticationError):
        await asyncio.wait_for(client.wait_closed(), 5)
    await client.stop()
    await server2.stop()


async def test_stop_is_prompt_while_reconnecting() -> None:
    server = ESLServer()
    port = await server.start()
    client = Inbound("127.0.0.1", port, timeout=1, reconnect=True, reconnect_delay=10)
    await client.start()
    await server.stop()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(client.stop(), 1)
    await asyncio.wait_for(client.wait_closed(), 1)


async def test_password_with_newline_refused() -> None:
    with pytest.raises(ValueError):
        Inbound("127.0.0.1", 1, "Clue\n\nexit")


def test_auth_request_constant_matches_corpus(corpus: object) -> None:
    from pathlib import Path

    assert isinstance(corpus, Path)
    assert (corpus / "plain.bin").read_bytes().startswith(AUTH_REQUEST)
