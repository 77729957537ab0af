"""The ``genesis`` command honours its connection options (the old CLI ignored them)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from genesis import cli
from genesis.testing import FreeSwitchSimulator
from tests.polling import until

APP = """
from genesis import Consumer

app = Consumer("127.0.0.1", 1, "not-the-password")
seen = []


@app.handle("HEARTBEAT")
def beat(event):
    seen.append(event["Event-Name"])
"""


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "cli_consumer_app.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "cli_consumer_app"
    sys.modules.pop("cli_consumer_app", None)


async def test_consumer_command_line_overrides_host_port_password(app_module: str) -> None:
    async with FreeSwitchSimulator(password="s3cret", heartbeat=0.05) as fs:
        args = cli.parser().parse_args(
            ["consumer", f"{app_module}:app", "--host", fs.host, "--port", str(fs.port),
             "--password", "s3cret"]
        )
        app = cli.consumer_app(args)
        running = asyncio.create_task(app.start())
        module = sys.modules[app_module]
        try:
            await until(lambda: bool(module.seen), 5)
        finally:
            await app.stop()
            await asyncio.wait_for(running, 5)
        assert module.seen[0] == "HEARTBEAT"


def test_target_must_name_an_attribute() -> None:
    with pytest.raises(SystemExit):
        cli.load("no_colon_here")
