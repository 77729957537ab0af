"""Inbound's lifecycle over real TCP: stop() racing a connect, reconnect backoff across losses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from genesis.exceptions import ConnectionError
from genesis.inbound import Inbound
from tests.esl_server import Connection, ESLServer, api_response, corpus_event, reply


def accept_auth(server: ESLServer, drop: Callable[[int], bool]) -> list[float]:
    """Have ``server`` note when each connection authenticates (loop time) and close the
    n-th connection (counted from 0) right after ``+OK accepted`` when ``drop(n)``."""
    loop = asyncio.get_running_loop()
    stamps: list[float] = []

    def on_command(conn: Connection, text: str) -> bool:
        if not text.startswith("auth "):
            return False
        stamps.append(loop.time())
        if not drop(len(stamps) - 1):
            return False
        conn.write(reply("+OK accepted"))
        conn.close()
        return True

    server.on_command = on_command
    return stamps


def tasks_besides(*mine: asyncio.Task[object] | None) -> set[asyncio.Task[object]]:
    """The unfinished tasks other than ``mine`` and the caller's own."""
    skip = {*mine, asyncio.current_task()}
    return {t for t in asyncio.all_tasks() if t not in skip and not t.done()}


async def test_stop_while_create_connection_runs_fails_start(server: ESLServer) -> None:
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    start = asyncio.ensure_future(client.start())
    await asyncio.sleep(0)  # start() is now inside loop.create_connection
    try:
        await asyncio.wait_for(client.stop(), 2)
        with pytest.raises(ConnectionError, match="stopped while connecting"):
            await asyncio.wait_for(start, 2)
        assert not client.is_connected and client.writer is None
        # The server saw the connection and then its close, before any auth.
        await server.wait_for(lambda: len(server.connections) == 1, timeout=2)
        test = asyncio.current_task()
        await server.wait_for(lambda: tasks_besides(test) == set(), timeout=2)
        transport = server.connections[0].transport
        assert transport is not None and transport.is_closing()
        assert not any(c.startswith("auth") for c in server.commands())
        # stop() stays the last word: nothing reconnects, and start() works again.
        await asyncio.sleep(0.1)
        assert len(server.connections) == 1
        await asyncio.wait_for(client.start(), 2)
        assert await client.api("echo again", timeout=2) == "again"
    finally:
        start.cancel()
        await asyncio.wait_for(client.stop(), 2)


def backoff_client(server: ESLServer) -> Inbound:
    """A reconnecting client whose backoff doubles from 0.05 s to at most 0.4 s."""
    return Inbound("127.0.0.1", server.port, "ClueCon", timeout=1, reconnect=True,
                   reconnect_delay=0.05, reconnect_max_delay=0.4)


async def test_flapping_server_backoff_grows_and_stop_ends_it(server: ESLServer) -> None:
    # Every connection after the first is dropped as soon as it authenticates. Without
    # backoff carried across losses that is one connection per ~50 ms (about 30 in 1.5 s);
    # doubling to 0.4 s (jitter: each wait is in [delay/2, delay]) allows at most 9.
    stamps = accept_auth(server, lambda n: n > 0)
    loop = asyncio.get_running_loop()
    client = backoff_client(server)
    try:
        await asyncio.wait_for(client.start(), 2)
        server.connections[0].close()
        await asyncio.sleep(1.5)
        reconnects = len(stamps) - 1
        assert 3 <= reconnects <= 12, stamps
        assert stamps[3] - stamps[2] >= 0.1 - 0.01  # the third reconnect waited 0.2 / 2 or more
        assert len(client.gaps) >= reconnects - 1  # each reconnect is still a reported gap
        started = loop.time()
        await asyncio.wait_for(client.stop(), 1)
        assert loop.time() - started < 0.5
        seen = len(stamps)
        await asyncio.sleep(0.45)  # longer than the longest wait: a live reconnector shows
        assert len(stamps) == seen and not client.is_connected
    finally:
        await asyncio.wait_for(client.stop(), 2)


async def test_backoff_starts_over_after_a_stable_connection(server: ESLServer) -> None:
    # Connections 1 and 2 drop at once (backoff 0.05 -> 0.1 -> 0.2 -> 0.4); connection 3
    # stays up longer than reconnect_max_delay, so its loss is retried after the base delay.
    stamps = accept_auth(server, lambda n: n in (1, 2))
    loop = asyncio.get_running_loop()
    client = backoff_client(server)
    try:
        await asyncio.wait_for(client.start(), 2)
        server.connections[0].close()
        await server.wait_for(lambda: len(stamps) == 4 and client.is_connected, timeout=2)
        assert stamps[3] - stamps[2] >= 0.1 - 0.01  # grown: the wait was in [0.1, 0.2]
        await asyncio.sleep(0.5)
        dropped = loop.time()
        server.connections[3].close()
        await server.wait_for(lambda: len(stamps) == 5 and client.is_connected, timeout=2)
        # Base delay: a wait in [0.025, 0.05]; carried over it would be in [0.2, 0.4].
        assert stamps[4] - dropped < 0.15
        assert len(client.gaps) == 4
    finally:
        await asyncio.wait_for(client.stop(), 2)


def lose_during_restore(client: Inbound, server: ESLServer) -> list[int]:
    """Make ``client``'s next handshake see its connection close after the auth reply and
    before the handshake resumes (a peer that closes right after answering: which runs
    first, the client's next step or its connection_lost, is up to the loop). Returns the
    attempts so far that were sabotaged this way (at most one)."""
    restore = client._restore_ledger
    sabotaged: list[int] = []

    async def closed_by_the_peer_first() -> None:
        if sabotaged:
            await restore()
            return
        sabotaged.append(len(server.connections))
        server.connections[-1].close()
        lost = client._lost
        assert lost is not None
        await asyncio.wait_for(asyncio.shield(lost), 2)

    client._restore_ledger = closed_by_the_peer_first  # type: ignore[method-assign]
    return sabotaged


async def test_a_loss_before_the_handshake_resumes_fails_start(server: ESLServer) -> None:
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    sabotaged = lose_during_restore(client, server)
    try:
        with pytest.raises(ConnectionError, match="connection closed while restoring "
                           "subscriptions and filters: closed by peer"):
            await asyncio.wait_for(client.start(), 2)
        assert sabotaged == [1] and not client.is_connected
        await asyncio.wait_for(client.stop(), 2)
        await asyncio.wait_for(client.start(), 2)  # a sound connection still works
        assert await client.api("echo fine", timeout=2) == "fine"
    finally:
        await asyncio.wait_for(client.stop(), 2)


async def test_a_loss_before_a_reconnect_handshake_resumes_reconnects_again(
    server: ESLServer,
) -> None:
    client = backoff_client(server)
    try:
        await asyncio.wait_for(client.start(), 2)
        sabotaged = lose_during_restore(client, server)
        server.connections[0].close()
        # The sabotaged second connection is a failed attempt, not a reconnect: a third
        # one follows, and only that one counts as the end of the gap.
        await server.wait_for(lambda: len(server.connections) == 3 and client.is_connected,
                              timeout=3)
        assert sabotaged == [2]
        assert len(client.gaps) == 1 and client.gaps[0].attempts == 2
        assert await client.api("echo back", timeout=2) == "back"
    finally:
        await asyncio.wait_for(client.stop(), 2)


async def test_a_stop_cancelled_while_closing_on_a_peer_that_does_not_read_aborts(
    server: ESLServer,
) -> None:
    # The peer stopped reading and more is queued than the kernel buffers hold, so the close
    # can never complete by itself: cancelling stop() must not leave the socket open for
    # good, nor skip the rest of the stop (handlers stopped, wait_closed() released).
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    await asyncio.wait_for(client.start(), 2)
    worker_cancelled = asyncio.Event()

    async def on_heartbeat(event: object) -> None:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            worker_cancelled.set()
            raise

    client.on("HEARTBEAT", on_heartbeat)
    await server.wait_for(lambda: len(server.connections) == 1, timeout=2)
    peer = server.connections[0]
    server.broadcast(corpus_event("HEARTBEAT"))
    await server.wait_for(lambda: client.events_pending == 1, timeout=2)
    assert peer.transport is not None
    peer.transport.pause_reading()
    transport = client.writer
    assert transport is not None
    transport.write(b"x" * (64 << 20))
    stopping = asyncio.ensure_future(client.stop())
    await asyncio.sleep(0.2)  # stop() is now waiting for a close that cannot complete
    assert not stopping.done() and transport.get_write_buffer_size() > 0, "nothing to test"
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await server.wait_for(lambda: client.writer is None, timeout=2)
    assert worker_cancelled.is_set()
    await asyncio.wait_for(client.wait_closed(), 2)


async def test_a_stop_cancelled_as_its_close_completes_still_raises_cancelled_error(
    server: ESLServer,
) -> None:
    # The cancel lands at each of stop()'s suspensions in turn, those where the socket has
    # just closed included: it must always propagate. (asyncio.wait_for before 3.12 returns
    # the result instead when the awaited future is done by the time the cancel is seen.)
    cancels = 0
    for turns in range(100):
        client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
        await asyncio.wait_for(client.start(), 2)
        stopping = asyncio.ensure_future(client.stop())
        for _ in range(turns):
            await asyncio.sleep(0)
        if not stopping.cancel():
            break
        cancels += 1
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(stopping, 2)
        await asyncio.wait_for(client.stop(), 2)  # cancelled before it ran, it did nothing
    else:
        pytest.fail("stop() never returned")
    await stopping
    assert cancels > 1 and client.writer is None


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["no-timeout", "timeout"])
async def test_a_cancel_landing_with_the_reply_is_not_dropped(
    server: ESLServer, timeout: float | None
) -> None:
    # The reply and an event whose handler cancels the command's caller come in one read:
    # the reply resolves the command, then the cancel lands before the caller resumes.
    # Before 3.12 asyncio.wait_for returned the reply and dropped that cancel.
    def on_command(conn: Connection, text: str) -> bool:
        if text != "api echo race":
            return False
        conn.write(api_response("race") + corpus_event("HEARTBEAT"))
        return True

    server.on_command = on_command
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    await asyncio.wait_for(client.start(), 2)
    try:
        caller = asyncio.ensure_future(client.api("echo race", timeout=timeout))
        client.on("HEARTBEAT", lambda _event: caller.cancel())
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert await client.api("echo next", timeout=2) == "next"  # nothing shifted
    finally:
        await asyncio.wait_for(client.stop(), 2)


async def test_concurrent_stops_end_the_connection_once(server: ESLServer) -> None:
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    await asyncio.wait_for(client.start(), 2)
    told: list[bool] = []
    client.watch_gaps(told.append)
    dispatcher = client._dispatcher
    closes = 0
    close = dispatcher.close

    async def counted_close() -> None:
        nonlocal closes
        closes += 1
        await close()

    dispatcher.close = counted_close  # type: ignore[method-assign]
    first = asyncio.ensure_future(client.stop())
    await asyncio.sleep(0)  # the first stop() is under way
    second = asyncio.ensure_future(client.stop())
    await asyncio.wait_for(asyncio.gather(first, second), 3)
    # The second waited for the first rather than stopping the handlers again.
    assert told == [False] and closes == 1 and client.writer is None
    await asyncio.wait_for(client.wait_closed(), 2)
    await asyncio.wait_for(client.stop(), 2)  # a later stop() has nothing left to tell
    assert told == [False]
    # And the client starts again, its next end told as its own.
    await asyncio.wait_for(client.start(), 2)
    await asyncio.wait_for(client.stop(), 2)
    assert told == [False, False]


async def test_a_stop_after_a_loss_tells_no_second_end(server: ESLServer) -> None:
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2, reconnect=False)
    await asyncio.wait_for(client.start(), 2)
    told: list[bool] = []
    client.watch_gaps(told.append)
    await server.wait_for(lambda: len(server.connections) == 1, timeout=2)
    server.connections[0].close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(client.wait_closed(), 2)
    assert told == [False]
    await asyncio.wait_for(client.stop(), 2)
    assert told == [False]


async def test_a_start_during_a_stop_waits_for_it_then_connects(server: ESLServer) -> None:
    client = Inbound("127.0.0.1", server.port, "ClueCon", timeout=2)
    await asyncio.wait_for(client.start(), 2)
    stopping = asyncio.ensure_future(client.stop())
    await asyncio.sleep(0)  # the stop is under way: its socket is closing
    try:
        await asyncio.wait_for(client.start(), 3)
        assert stopping.done()
        # The stop was over before the new connection opened: none of it lands on that one.
        for _ in range(20):
            await asyncio.sleep(0)
        closed = asyncio.ensure_future(client.wait_closed())
        seen = asyncio.Event()
        client.on("HEARTBEAT", lambda event: seen.set())
        await server.wait_for(lambda: len(server.connections) == 2, timeout=2)
        server.broadcast(corpus_event("HEARTBEAT"))
        await asyncio.wait_for(seen.wait(), 2)
        assert await client.api("echo again", timeout=2) == "again"
        assert not closed.done() and client.is_connected
        closed.cancel()
    finally:
        await asyncio.wait_for(client.stop(), 2)
