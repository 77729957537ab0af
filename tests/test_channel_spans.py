"""Every span of the tracing seed for Channel and RingGroup, with exactly its attributes;
unsampled spans build no attributes; metrics count every operation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from genesis.channel import Channel
from genesis.group import InMemoryLoadBalancer, RingGroup, RingMode
from genesis.inbound import Inbound
from genesis.testing import FreeSwitchSimulator
from genesis.types import ChannelState
from tests.otel_sdk import install_sdk

WAIT = 10.0

# The seed (../shared/seed/tracing.md), Channel and RingGroup sections, verbatim.
SEED: dict[str, set[str]] = {
    "channel.create": {"channel.dial_path", "channel.uuid", "channel.has_variables"},
    "channel.answer": {
        "channel.uuid", "channel.state", "channel.answer.success", "channel.answer.duration",
    },
    "channel.hangup": {"channel.uuid", "channel.state", "hangup.cause", "call.duration"},
    "channel.bridge": {
        "channel.uuid", "channel.other_uuid", "channel.state", "channel.bridge.success",
    },
    "channel.playback": {"channel.uuid", "playback.path", "playback.block"},
    "channel.say": {"channel.uuid", "say.module", "say.kind", "say.method"},
    "channel.play_and_get_digits": {
        "channel.uuid", "play_and_get_digits.file", "play_and_get_digits.tries",
    },
    "channel.park": {"channel.uuid", "channel.state"},
    "channel.wait": {"channel.uuid", "wait.target", "wait.timeout", "wait.type", "wait.result"},
    "channel.dtmf.received": {"channel.uuid", "dtmf.digit", "dtmf.handled"},
    "ring_group.ring": {
        "ring_group.mode", "ring_group.size", "ring_group.timeout", "ring_group.has_balancer",
        "ring_group.has_variables", "ring_group.balanced", "ring_group.result",
        "ring_group.duration", "ring_group.answered_uuid", "ring_group.answered_dial_path",
    },
}


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exp, _ = install_sdk(monkeypatch)
    yield exp
    exp.clear()


@pytest.fixture
async def fs() -> AsyncIterator[FreeSwitchSimulator]:
    async with FreeSwitchSimulator(host="127.0.0.1", port=0, password="ClueCon") as sim:
        sim.endpoint("user/1001", answer_after=0.05, digits="7#", digit_interval=0.05)
        sim.endpoint("user/1002", ring_forever=True)
        sim.playback_seconds = 0.01
        yield sim


@pytest.fixture
async def client(fs: FreeSwitchSimulator) -> AsyncIterator[Inbound]:
    async with Inbound(fs.host, fs.port, "ClueCon") as inbound:
        yield inbound


async def _exercise(client: Inbound) -> str:
    """One of every operation the seed names; returns the uuid of the leg with a DTMF handler."""
    leg = await Channel.create(client, "user/1001", {"campaign": "x"})
    other = await Channel.create(client, "user/1001")
    leg.on_dtmf("#")(lambda digit: None)
    await leg.wait(ChannelState.EXECUTE, timeout=WAIT)
    await leg.answer()
    await leg.play_and_get_digits(1, 2000, "#", "/tmp/menu.wav", minimal=1, maximum=2)
    await leg.playback("/tmp/a.wav")
    await leg.say("7")
    await other.wait(ChannelState.EXECUTE, timeout=WAIT)
    await other.park()  # already parked by its originate: park nests, as on FreeSWITCH
    await leg.bridge(other)
    await leg.hangup()
    await other.wait(ChannelState.HANGUP, timeout=WAIT)
    winner = await RingGroup.ring(
        client, ["user/1002", "user/1001"], RingMode.BALANCING, 0.3,
        variables={"a": "b"}, balancer=InMemoryLoadBalancer(),
    )
    assert winner is not None
    await winner.hangup()
    return leg.uuid


async def test_every_seed_span_with_exactly_its_attributes(
    exporter: InMemorySpanExporter, client: Inbound
) -> None:
    handled_leg = await asyncio.wait_for(_exercise(client), WAIT)
    spans = exporter.get_finished_spans()
    seen: dict[str, list[set[str]]] = {}
    attrs: dict[str, dict[str, Any]] = {}  # the first span of each name
    for span in spans:
        if span.name in SEED:
            seen.setdefault(span.name, []).append(set(span.attributes or {}))
            attrs.setdefault(span.name, dict(span.attributes or {}))
    assert set(seen) == set(SEED)
    for name, key_sets in seen.items():
        for keys in key_sets:
            assert keys == SEED[name], name
    # Both legs dial user/1001, whose far end presses 7 then #: only one leg has a handler.
    dtmf = [
        s for s in spans
        if s.name == "channel.dtmf.received"
        and (s.attributes or {}).get("channel.uuid") == handled_leg
    ]
    digits = {}
    for span in dtmf:
        attributes = dict(span.attributes or {})
        digits[attributes["dtmf.digit"]] = attributes["dtmf.handled"]
    assert digits == {"7": False, "#": True}
    ring = attrs["ring_group.ring"]
    assert ring["ring_group.balanced"] is True
    assert ring["ring_group.result"] == "answered"
    assert ring["ring_group.answered_dial_path"] == "user/1001"
    assert attrs["channel.create"]["channel.has_variables"] is True


async def test_ring_group_error_attribute(
    exporter: InMemorySpanExporter, fs: FreeSwitchSimulator
) -> None:
    closed = Inbound(fs.host, fs.port, "ClueCon")
    await closed.start()
    await closed.stop()
    with pytest.raises(Exception):  # noqa: B017 - whatever the engine raises when closed
        await RingGroup.ring(closed, ["user/1001"], timeout=1.0)
    span = next(s for s in exporter.get_finished_spans() if s.name == "ring_group.ring")
    ring = dict(span.attributes or {})
    assert ring["ring_group.result"] == "error"
    assert "ring_group.error" in ring
    assert set(ring) == (
        SEED["ring_group.ring"]
        - {"ring_group.answered_uuid", "ring_group.answered_dial_path"}
    ) | {"ring_group.error"}


async def test_unsampled_spans_build_no_attributes(
    monkeypatch: pytest.MonkeyPatch, client: Inbound
) -> None:
    exp, _ = install_sdk(monkeypatch, sampler=ALWAYS_OFF)

    def no_attributes(self: Channel) -> dict[str, Any]:
        raise AssertionError("attributes built for an unsampled span")

    monkeypatch.setattr(Channel, "_base_attributes", no_attributes)
    leg = await asyncio.wait_for(Channel.create(client, "user/1001"), WAIT)
    await asyncio.wait_for(leg.answer(), WAIT)
    await asyncio.wait_for(leg.playback("/tmp/a.wav"), WAIT)
    await asyncio.wait_for(leg.hangup(), WAIT)
    assert exp.get_finished_spans() == ()


async def test_metrics_count_operations(
    monkeypatch: pytest.MonkeyPatch, client: Inbound
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: provider)
    leg = await asyncio.wait_for(Channel.create(client, "user/1001"), WAIT)
    await asyncio.wait_for(leg.answer(), WAIT)
    await asyncio.wait_for(leg.hangup(), WAIT)
    assert await RingGroup.ring(client, ["user/1002"], timeout=0.2) is None
    data = reader.get_metrics_data()
    assert data is not None
    counts: dict[tuple[str, str], int] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "genesis.operations":
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        key = (str(attributes["operation"]), str(attributes["outcome"]))
                        counts[key] = int(getattr(point, "value", 0))
    assert counts[("channel.answer", "ok")] == 1
    assert counts[("channel.hangup", "ok")] >= 1
    assert counts[("ring_group.ring", "no_answer")] == 1
    provider.shutdown()
