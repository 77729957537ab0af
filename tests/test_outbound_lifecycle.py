"""Outbound over real TCP: sockets without ``full``, and stop() from anywhere, always bounded."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from genesis.exceptions import GenesisError, SessionGoneAway
from genesis.outbound import CANCEL_GRACE, Outbound, Session
from genesis.testing import FreeSwitchSimulator
from tests.esl_server import OUTBOUND_FRAMES, OUTBOUND_UUID, FakeCall, reply
from tests.polling import until


def handler_that_blocks() -> tuple[asyncio.Event, Callable[[Session], Awaitable[None]]]:
    """A handler that sets the event once it runs, then waits until it is cancelled."""
    started = asyncio.Event()

    async def handler(session: Session) -> None:
        started.set()
        await asyncio.get_running_loop().create_future()

    return started, handler


async def call(port: int) -> FakeCall:
    _transport, fake = await asyncio.get_running_loop().create_connection(
        FakeCall, "127.0.0.1", port)
    return fake


async def listening(server: Outbound) -> tuple[asyncio.Future[None], int]:
    """``server.start()`` (blocking) as a task, once it listens; and its port."""
    runner = asyncio.ensure_future(server.start())
    await until(lambda: bool(server.addresses))
    return runner, server.addresses[0][1]


async def refused(port: int) -> bool:
    """Whether nothing listens on ``port`` any more."""
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def outbound_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "genesis.outbound"]


@pytest.mark.parametrize("mode", ["async", "static"])
async def test_socket_without_full_gets_its_events_through_myevents(
    freeswitch: FreeSwitchSimulator, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Without "full" FreeSWITCH refuses "event"; the handler must still run, and a blocking
    # execute still needs the call's CHANNEL_EXECUTE_COMPLETE.
    seen: dict[str, Any] = {}

    async def handler(session: Session) -> None:
        seen["control"] = session.context.get("Control")
        done = await session.sendmsg("execute", "answer", block=True, timeout=5)
        seen["complete"] = (done.name, done.get("Application"))
        await session.sendmsg("hangup", data="NORMAL_CLEARING")

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    try:
        socket = f"127.0.0.1:{server.addresses[0][1]}" + (" async" if mode == "async" else "")
        freeswitch.route("5000", socket=socket)
        channel = await freeswitch.place_call(destination="5000")
        await asyncio.wait_for(channel.done, 10)
    finally:
        await server.stop(timeout=2)
    assert seen == {
        "control": "single-channel",
        "complete": ("CHANNEL_EXECUTE_COMPLETE", "answer"),
    }
    assert channel.applications == ["socket", "answer"]
    assert channel.hangup_cause == "NORMAL_CLEARING"
    # linger (on by default) is refused there too: said, not silently dropped.
    assert any("linger refused (-ERR command not found)" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


async def test_stop_called_by_a_session_handler() -> None:
    server: Outbound
    stopped_inside: list[bool] = []

    async def handler(session: Session) -> None:
        await server.stop(timeout=1)
        stopped_inside.append(True)

    server = Outbound(handler, "127.0.0.1", 0)
    runner, port = await listening(server)
    fake = await call(port)
    done, _ = await asyncio.wait([runner], timeout=5)
    assert runner in done, "start() still blocked after its handler called stop()"
    await asyncio.wait_for(fake.closed, 5)
    assert stopped_inside == [True] and server.addresses == []


async def test_stop_called_by_an_event_handler_of_a_session_it_ends() -> None:
    # The async event handler runs on the session's workers, which close with the session:
    # the stop it started must still finish (the other call cancelled, start() released).
    server: Outbound
    cancelled: list[str] = []
    long_started = asyncio.Event()

    async def handler(session: Session) -> None:
        if not long_started.is_set():
            long_started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append("long call")
                raise

        async def on_complete(event: Any) -> None:
            await server.stop(timeout=0.2)

        session.on("CHANNEL_EXECUTE_COMPLETE", on_complete)
        await session.sendmsg("execute", "answer", block=True, timeout=3)
        await asyncio.sleep(30)

    server = Outbound(handler, "127.0.0.1", 0)
    runner, port = await listening(server)
    long = await call(port)
    await asyncio.wait_for(long_started.wait(), 5)
    stopper = await call(port)
    try:
        done, _ = await asyncio.wait([runner], timeout=5)
        assert runner in done, "start() still blocked: stop() was abandoned halfway"
        await asyncio.wait_for(asyncio.gather(long.closed, stopper.closed), 5)
        assert cancelled == ["long call"] and server.sessions == {}
    finally:
        runner.cancel()
        for task in list(server.sessions.values()):
            task.cancel()


async def test_stop_returns_when_a_handler_swallows_its_cancellation() -> None:
    release = asyncio.Event()

    async def handler(session: Session) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await release.wait()  # a handler that does not honour cancellation

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    fake = await call(server.addresses[0][1])
    await until(lambda: bool(server.sessions))
    stopping = asyncio.ensure_future(server.stop(timeout=0.1))
    try:
        done, _ = await asyncio.wait([stopping], timeout=CANCEL_GRACE + 3)
        assert stopping in done, "stop() waits forever for a session that ignores cancellation"
        # Its connection is not left open: FreeSWITCH sees the socket close.
        await asyncio.wait_for(fake.closed, 2)
    finally:
        release.set()
        await asyncio.wait_for(stopping, 5)
    # The handler ends once released; its session leaves the table a loop turn or two later.
    await until(lambda: not server.sessions, 2)


async def test_a_handler_timeout_is_logged_as_its_failure_not_the_handshake(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(session: Session) -> None:
        await session.sendmsg("execute", "playback", "x.wav", block=True, timeout=0.2)

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    with caplog.at_level(logging.INFO, logger="genesis.outbound"):
        fake = await call(server.addresses[0][1])
        fake.complete_executes = False
        await asyncio.wait_for(fake.closed, 5)
        await server.stop()
    records = [r for r in caplog.records if r.name == "genesis.outbound"]
    assert not [r for r in records if "handshake" in r.getMessage()]
    failures = [r for r in records if r.getMessage().startswith("outbound handler failed")]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], asyncio.TimeoutError)


async def test_a_silent_peer_is_logged_as_a_handshake_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[Session] = []

    async def handler(session: Session) -> None:
        ran.append(session)

    server = Outbound(handler, "127.0.0.1", 0, timeout=0.2)
    await server.start(block=False)
    with caplog.at_level(logging.INFO, logger="genesis.outbound"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0][1])
        assert await asyncio.wait_for(reader.readuntil(b"\n\n"), 5) == b"connect\n\n"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, never answered
        writer.close()
        await server.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "genesis.outbound"]
    assert "session None: FreeSWITCH did not answer the handshake in 0.2s" in messages
    assert ran == []


async def test_a_hangup_during_a_blocking_sendmsgs_subscribe_raises_session_gone_away() -> None:
    # events=False: the blocking sendmsg subscribes first. The call hangs up (and the linger
    # notice comes) while that subscription awaits its reply, so the execution will never
    # complete: the sendmsg must fail at once, not wait forever for it.
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handler(session: Session) -> None:
        try:
            await session.sendmsg("execute", "playback", "x.wav", block=True)
        except BaseException as exc:
            outcome.set_result(exc)
            raise
        outcome.set_result(None)

    server = Outbound(handler, "127.0.0.1", 0, events=False, linger=True)
    await server.start(block=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0][1])

    async def command() -> str:
        return (await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)).decode()

    try:
        assert await command() == "connect\n\n"
        writer.write(OUTBOUND_FRAMES[0])
        assert await command() == "linger\n\n"
        writer.write(b"Content-Type: command/reply\nReply-Text: +OK will linger\n\n")
        assert (await command()).startswith("event plain ")
        hangup, notice = OUTBOUND_FRAMES[13], OUTBOUND_FRAMES[20]
        assert b"CHANNEL_HANGUP" in hangup and b"linger" in notice
        writer.write(hangup + notice)
        writer.write(b"Content-Type: command/reply\nReply-Text: +OK event listener enabled "
                     b"plain\n\n")
        error = await asyncio.wait_for(outcome, 2)
        assert isinstance(error, SessionGoneAway), error
        # Refused before it was written: FreeSWITCH never saw the sendmsg.
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
        await server.stop(timeout=2)


async def test_stop_cancelling_a_close_stuck_on_a_peer_that_does_not_read_aborts_it() -> None:
    # The handler is done; its session's close() waits for a socket that cannot flush (the
    # peer stopped reading). stop(timeout=0) cancels that wait: the socket must not stay
    # open for good, nor the session's async event handlers run on.
    ready, paused, returned = asyncio.Event(), asyncio.Event(), asyncio.Event()
    worker_cancelled = asyncio.Event()
    sessions: list[Session] = []

    async def on_execute(event: Any) -> None:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            worker_cancelled.set()
            raise

    async def handler(session: Session) -> None:
        session.on("CHANNEL_EXECUTE", on_execute)
        await session.sendmsg("execute", "answer", block=True, timeout=5)
        sessions.append(session)
        ready.set()
        await paused.wait()
        assert session.writer is not None
        session.writer.write(b"x" * (64 << 20))  # more than the kernel buffers hold
        returned.set()

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    fake = await call(server.addresses[0][1])
    assert fake.transport is not None
    try:
        await asyncio.wait_for(ready.wait(), 5)
        fake.transport.pause_reading()
        paused.set()
        await asyncio.wait_for(returned.wait(), 5)
        [session] = sessions
        transport = session.writer
        assert transport is not None and transport.is_closing()
        assert transport.get_write_buffer_size() > 0, "the close could complete: no test"
        await asyncio.wait_for(server.stop(timeout=0), CANCEL_GRACE + 5)
        assert session.writer is None, "the cancelled close left the socket open"
        assert worker_cancelled.is_set()
        assert server.sessions == {}
    finally:
        fake.transport.close()


async def test_a_cancelled_error_the_handler_raises_itself_is_its_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(session: Session) -> None:
        inner = asyncio.ensure_future(asyncio.get_running_loop().create_future())
        inner.cancel()
        await inner  # someone else's cancellation: the session itself was not cancelled

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    with caplog.at_level(logging.INFO, logger="genesis.outbound"):
        fake = await call(server.addresses[0][1])
        await asyncio.wait_for(fake.closed, 5)
        await server.stop()
    failures = [r for r in outbound_records(caplog)
                if r.getMessage() == "outbound handler failed for session " + OUTBOUND_UUID]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], asyncio.CancelledError)
    assert server.sessions == {}


async def test_a_handler_cancelled_by_stop_is_not_logged_as_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started, handler = handler_that_blocks()
    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    with caplog.at_level(logging.INFO, logger="genesis.outbound"):
        fake = await call(server.addresses[0][1])
        await asyncio.wait_for(started.wait(), 5)
        await server.stop(timeout=0)
        await asyncio.wait_for(fake.closed, 5)
    assert [r for r in outbound_records(caplog) if r.levelno >= logging.WARNING] == []
    assert server.sessions == {}


async def test_cancelling_a_blocked_start_stops_the_server_as_stop_does() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[str | None] = []

    async def handler(session: Session) -> None:
        started.set()
        await release.wait()
        finished.append(session.uuid)

    server = Outbound(handler, "127.0.0.1", 0)
    runner, port = await listening(server)
    fake = await call(port)
    await asyncio.wait_for(started.wait(), 5)
    runner.cancel()

    async def unlistened() -> None:
        while server.addresses:
            await asyncio.sleep(0)

    await asyncio.wait_for(unlistened(), 5)
    assert await refused(port)
    # As stop() does: the running call is given time to finish, not cut off.
    assert not runner.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, 5)
    await asyncio.wait_for(fake.closed, 5)
    assert finished == [OUTBOUND_UUID] and server.sessions == {}


async def test_a_start_cancelled_while_starting_leaves_nothing_listening() -> None:
    async def handler(session: Session) -> None:
        pass

    port = free_port()
    server = Outbound(handler, "127.0.0.1", port)
    # Cancelled at each of its suspensions in turn, until the first turn it has returned by.
    for turns in range(100):
        starting = asyncio.ensure_future(server.start(block=False))
        for _ in range(turns):
            await asyncio.sleep(0)
        if not starting.cancel():
            break
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert await refused(port), f"still listening after a cancel {turns} turns in"
    else:
        pytest.fail("start() never returned")
    await starting
    assert server.addresses[0][1] == port
    await server.stop()


async def test_a_second_concurrent_start_fails_and_the_first_serves_alone() -> None:
    async def handler(session: Session) -> None:
        pass

    server = Outbound(handler, "127.0.0.1", 0)
    first, second = await asyncio.gather(
        server.start(block=False), server.start(block=False), return_exceptions=True)
    assert first is None
    assert isinstance(second, GenesisError) and "already started" in str(second)
    [(_host, port)] = server.addresses
    with pytest.raises(GenesisError, match="already started"):
        await server.start()
    await server.stop()
    assert await refused(port)
    # Stopped, it starts again.
    await server.start(block=False)
    await server.stop()


async def test_a_stop_while_start_opens_its_socket_wins() -> None:
    async def handler(session: Session) -> None:
        pass

    # A host name: start() awaits its resolution before it has a socket to close.
    server = Outbound(handler, "localhost", 0)
    starting = asyncio.ensure_future(server.start())
    await asyncio.sleep(0)
    await server.stop()
    await asyncio.wait_for(starting, 5)
    assert server.addresses == []


async def test_a_refused_connect_is_a_handshake_failure_and_the_handler_never_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[Session] = []

    async def handler(session: Session) -> None:
        ran.append(session)

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    with caplog.at_level(logging.INFO, logger="genesis.outbound"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0][1])
        assert await asyncio.wait_for(reader.readuntil(b"\n\n"), 5) == b"connect\n\n"
        writer.write(reply("-ERR no channel"))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing else sent
        writer.close()
        await server.stop()
    records = outbound_records(caplog)
    assert not [r for r in records if "handler failed" in r.getMessage()]
    failures = [r for r in records if r.getMessage() == "session None: outbound handshake failed"]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
    assert failures[0].exc_info is not None
    assert "connect refused: -ERR no channel" in str(failures[0].exc_info[1])
    assert ran == []


async def test_an_earlier_stop_that_ends_late_leaves_a_restarted_server_alone() -> None:
    # A graceful stop() still waits for a slow session when a forcing stop(timeout=0) has
    # returned and the server has been started again: the first stop's end must not end the
    # new start() (which would return with its server still listening).
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(session: Session) -> None:
        if started.is_set():
            return
        started.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            await release.wait()  # slow to honour its cancellation

    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    await call(server.addresses[0][1])
    await asyncio.wait_for(started.wait(), 5)
    graceful = asyncio.ensure_future(server.stop(timeout=30))
    await asyncio.sleep(0)
    await asyncio.wait_for(server.stop(timeout=0), CANCEL_GRACE + 5)
    runner, port = await listening(server)
    try:
        release.set()
        await asyncio.wait_for(graceful, 5)
        for _ in range(20):  # what the earlier stop settled reaches start() in a few turns
            await asyncio.sleep(0)
        assert not runner.done(), "start() of the new server returned: an older stop() ended it"
        assert server.addresses == [("127.0.0.1", port)]
    finally:
        await server.stop()
        await asyncio.wait_for(runner, 5)
    assert await refused(port)


async def test_a_session_task_cancelled_from_outside_ends_cancelled() -> None:
    # Not through stop(): the cancel must still reach whoever awaits the session's task. On
    # 3.10, which cannot tell it from a CancelledError the handler raised itself, it was
    # logged as the handler's failure and swallowed (the task returned normally).
    started, handler = handler_that_blocks()
    server = Outbound(handler, "127.0.0.1", 0)
    await server.start(block=False)
    try:
        fake = await call(server.addresses[0][1])
        await asyncio.wait_for(started.wait(), 5)
        [task] = server.sessions.values()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        await asyncio.wait_for(fake.closed, 5)
    finally:
        await server.stop()
