"""What the benches share: the real-traffic corpus beside the repository, its event
frames, and the parser twin a bench runs on."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "freeswitch-1.10.12"


def parser_twin(name: str) -> ModuleType:
    """The ``compiled`` or ``python`` parser twin (a skip when extensions are disabled)."""
    if name == "python":
        return importlib.import_module("genesis._parser_py")
    if os.environ.get("GENESIS_NO_EXTENSIONS") == "1":
        pytest.skip("GENESIS_NO_EXTENSIONS=1: the compiled twin is disabled on purpose")
    return importlib.import_module("genesis._parser")


def event_frames() -> list[bytes]:
    """The text/event-plain frames of plain.bin, cut by their Content-Length."""
    data = (CORPUS / "plain.bin").read_bytes()
    frames = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n\n", pos)
        head = data[pos:end]
        length = 0
        for line in head.split(b"\n"):
            if line.startswith(b"Content-Length: "):
                length = int(line[16:])
        stop = end + 2 + length
        if b"Content-Type: text/event-plain" in head:
            frames.append(data[pos:stop])
        pos = stop
    return frames
