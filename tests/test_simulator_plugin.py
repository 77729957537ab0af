"""The pytest plugin (``freeswitch`` fixture) and ``python -m genesis.testing``."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from genesis.inbound import Inbound
from genesis.protocol.parser import Parser
from genesis.testing import FreeSwitchSimulator

REPO = Path(__file__).resolve().parent.parent


async def test_fixture_is_a_running_simulator(freeswitch: FreeSwitchSimulator) -> None:
    assert freeswitch.address == ("127.0.0.1", freeswitch.port) and freeswitch.port > 0
    freeswitch.endpoint("user/1001", answer_after=0)
    async with Inbound(*freeswitch.address, freeswitch.password, timeout=2) as client:
        reply = await client.send("api originate user/1001 &park()")
        assert (reply.body or "").startswith("+OK ")
    assert len(freeswitch.channels) == 1


def test_plugin_loads_in_another_suite(tmp_path: Path) -> None:
    """A user's suite gets the fixture from the installed pytest11 entry point alone."""
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            from genesis.inbound import Inbound

            async def test_status(freeswitch):
                async with Inbound(*freeswitch.address, "ClueCon", timeout=2) as client:
                    reply = await client.send("api status")
                    assert reply.body.startswith("UP ")
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-o",
            "asyncio_mode=auto",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_user.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


async def test_command_line_server() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genesis.testing",
        "--port",
        "0",
        "--password",
        "s3cret",
        "--endpoint",
        "user/1001=0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, line
        reader, writer = await asyncio.open_connection("127.0.0.1", int(match.group(1)))
        writer.write(b"auth s3cret\n\napi originate user/1001 &park()\n\nexit\n\n")
        data = await asyncio.wait_for(reader.read(), 10)
        frames = Parser().feed(data)
        assert [f.content_type for f in frames] == [
            "auth/request",
            "command/reply",
            "api/response",
            "command/reply",
            "text/disconnect-notice",
        ]
        assert (frames[2].body or "").startswith("+OK ")
        writer.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0


def test_fixture_without_pytest_asyncio_says_why(tmp_path: Path) -> None:
    """Installed everywhere by its entry point, the plugin must not break a suite that
    lacks pytest-asyncio: only a test asking for the fixture fails, with the reason."""
    (tmp_path / "test_user.py").write_text(
        "def test_needs_it(freeswitch):\n    pass\n\ndef test_other():\n    pass\n"
    )
    runner = textwrap.dedent(
        """
        import importlib.util, sys
        real = importlib.util.find_spec
        def hide(name, *rest):
            return None if name == "pytest_asyncio" else real(name, *rest)
        importlib.util.find_spec = hide
        import pytest
        sys.exit(pytest.main(["-q", "-p", "no:asyncio", "-p", "no:cacheprovider", sys.argv[1]]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", runner, str(tmp_path / "test_user.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout and "1 error" in result.stdout
    assert "needs pytest-asyncio" in result.stdout
