"""A real, throw-away redis-server for the test session.

Started on a free loopback port with persistence off (``--save "" --appendonly no``)
so nothing is written to disk. When the binary is missing the Redis tests skip with
the reason, unless ``GENESIS_REQUIRE_REDIS=1`` (CI), where they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

REDIS_BINARY = "/usr/bin/redis-server"
START_TIMEOUT = 10.0


def _binary() -> str | None:
    if os.access(REDIS_BINARY, os.X_OK):
        return REDIS_BINARY
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    """Run redis-server until the block ends; yields its ``redis://127.0.0.1:<port>/0`` URL."""
    binary = _binary()
    if binary is None:
        reason = "redis-server not installed (install the redis-server package)"
        if os.environ.get("GENESIS_REQUIRE_REDIS") == "1":
            pytest.fail(f"GENESIS_REQUIRE_REDIS=1 but {reason}")
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="genesis-redis-") as workdir:
        # A port picked free can be taken before redis binds it: retry a few times.
        for _attempt in range(5):
            port = _free_port()
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", workdir, "--logfile", ""],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + START_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                if _ping(port):
                    break
                time.sleep(0.02)
            if process.poll() is None and _ping(port):
                break
            process.kill()
            process.wait(timeout=5)
        else:
            pytest.fail(f"redis-server ({binary}) did not start on a loopback port")
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


# -- worker processes sharing one Redis ------------------------------------------------

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_WAIT = 10.0


async def spawn_python(code: str, *args: str) -> asyncio.subprocess.Process:
    """Run ``code`` in a fresh interpreter (another process, as a second worker would be)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, cwd=_REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL: the crash the lease TTLs are there for (no cleanup code runs)."""
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    await asyncio.wait_for(process.wait(), WORKER_WAIT)


async def run_workers(code: str, args: Sequence[str], count: int, timeout: float = 60) -> None:
    """Run ``count`` copies of ``code`` to completion; each must exit 0."""
    workers = [await spawn_python(code, *args) for _ in range(count)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(w.communicate() for w in workers)), timeout
        )
    finally:
        for worker in workers:
            await kill(worker)
    for worker, (_out, err) in zip(workers, results, strict=True):
        assert worker.returncode == 0, err.decode()
