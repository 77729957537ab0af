"""Parse-only throughput of both parser twins on the real captures.

Each file is fed in 64 KiB chunks, as a socket would deliver it, and every message
is handled in one of two ways: ``route`` reads what an engine needs to dispatch an
event (its routing name and Unique-ID), ``materialize`` builds ``dict(event)``.
The ``naive`` case is the baseline the targets are stated against: split lines and
``urllib.parse.unquote`` every name and value into a dict, the way the 2026.10.18
release parsed (``json.loads`` for JSON bodies, ElementTree plus ``unquote`` for XML).
Benches of one file share a group so the ratios read side by side.

Run: ``.venv/bin/python -m pytest bench/test_parser_bench.py --benchmark-only``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote
from xml.etree import ElementTree

import pytest
from capture import parser_twin

CHUNK = 64 * 1024
FILES = ["plain", "json", "xml"]
EVENTS = {"plain": 1347, "json": 1345, "xml": 1348}


def _chunks(data: bytes) -> list[bytes]:
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]


def _route(twin: ModuleType, chunks: list[bytes]) -> int:
    parser = twin.Parser()
    events = 0
    for chunk in chunks:
        for message in parser.feed(chunk):
            if message.name is not None:
                message.get("Unique-ID")
                events += 1
    return events


def _materialize(twin: ModuleType, chunks: list[bytes]) -> int:
    parser = twin.Parser()
    headers = 0
    for chunk in chunks:
        for message in parser.feed(chunk):
            headers += len(dict(message))
    return headers


def _naive_block(block: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    for line in block.decode("utf-8", "surrogateescape").split("\n"):
        if not line:
            continue
        name, _, value = line.partition(": ")
        headers[unquote(name)] = unquote(value)
    return headers


def _naive_xml(body: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    root = ElementTree.fromstring(body)
    for element in root.find("headers") or ():
        headers[element.tag] = unquote(element.text or "")
    return headers


def _naive(chunks: list[bytes]) -> int:
    """Baseline: line splitting and ``unquote`` of every name and value, in Python.

    Its framing is linear (an offset into the buffer, compacted once per chunk) so that
    the ratios measure parsing, not a quadratic buffer copy.
    """
    buf = b""
    frames = 0
    for chunk in chunks:
        buf += chunk
        pos = 0
        while True:
            end = buf.find(b"\n\n", pos)
            if end < 0:
                break
            head = _naive_block(buf[pos:end])
            length = int(head.get("Content-Length", 0))
            stop = end + 2 + length
            if len(buf) < stop:
                break
            body = buf[end + 2:stop]
            pos = stop
            content_type = head.get("Content-Type")
            if content_type == "text/event-plain":
                inner, _, _ = body.partition(b"\n\n")
                _naive_block(inner)
            elif content_type == "text/event-json":
                json.loads(body.decode("utf-8", "surrogateescape"))
            elif content_type == "text/event-xml":
                _naive_xml(body)
            frames += 1
        buf = buf[pos:]
    return frames


def _record(benchmark: Any, size: int, events: int) -> None:
    if benchmark.disabled:  # a smoke run (--benchmark-disable): nothing was timed
        return
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["events_per_s"] = round(events / mean)
    benchmark.extra_info["MB_per_s"] = round(size / mean / 1e6, 1)
    benchmark.extra_info["us_per_event"] = round(mean / events * 1e6, 3)


@pytest.mark.parametrize("fmt", FILES)
@pytest.mark.parametrize("mode", ["route", "materialize"])
@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_parse(benchmark: Any, corpus: Path, fmt: str, mode: str, impl: str) -> None:
    twin = parser_twin(impl)
    data = (corpus / f"{fmt}.bin").read_bytes()
    chunks = _chunks(data)
    run: Callable[[ModuleType, list[bytes]], int] = _route if mode == "route" else _materialize
    benchmark.group = fmt
    result = benchmark.pedantic(run, args=(twin, chunks), rounds=5 if impl == "python" else 15,
                                warmup_rounds=1)
    if mode == "route":
        assert result == EVENTS[fmt]
    _record(benchmark, len(data), EVENTS[fmt])


@pytest.mark.parametrize("fmt", FILES)
def test_naive_baseline(benchmark: Any, corpus: Path, fmt: str) -> None:
    data = (corpus / f"{fmt}.bin").read_bytes()
    chunks = _chunks(data)
    benchmark.group = fmt
    frames = benchmark.pedantic(_naive, args=(chunks,), rounds=3, warmup_rounds=0)
    assert frames > EVENTS[fmt]
    _record(benchmark, len(data), EVENTS[fmt])


def test_plain_ratios_paired(benchmark: Any, corpus: Path) -> None:
    """The two targets on plain.bin, as medians of back-to-back rounds.

    Separate benches run minutes apart on a shared machine, so their ratio mixes parser
    speed with load drift; timing naive, route and materialize one after another, round
    after round, and taking the median of the per-round ratios cancels most of it.
    Targets: route >= 50x naive, materialize >= 10x (figures in extra_info).
    """
    twin = parser_twin("compiled")  # skips when GENESIS_NO_EXTENSIONS=1
    chunks = _chunks((corpus / "plain.bin").read_bytes())

    def best_of_3(run: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        return best

    def rounds() -> tuple[list[float], list[float]]:
        route: list[float] = []
        materialize: list[float] = []
        for _ in range(1 if benchmark.disabled else 11):
            naive = best_of_3(lambda: _naive(chunks))
            route.append(naive / best_of_3(lambda: _route(twin, chunks)))
            materialize.append(naive / best_of_3(lambda: _materialize(twin, chunks)))
        return route, materialize

    benchmark.group = "plain ratios"
    route, materialize = benchmark.pedantic(rounds, rounds=1, iterations=1)
    if benchmark.disabled:
        return
    benchmark.extra_info["route_x_naive"] = round(statistics.median(route), 1)
    benchmark.extra_info["materialize_x_naive"] = round(statistics.median(materialize), 1)
    print(
        f"\nplain.bin, compiled twin, median of 11 paired rounds: route "
        f"{statistics.median(route):.1f}x naive (target 50x), materialize "
        f"{statistics.median(materialize):.1f}x naive (target 10x)"
    )
