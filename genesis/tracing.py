"""Lazy OpenTelemetry spans: paid for only when they will be recorded.

A busy FreeSWITCH sends thousands of events a second; a span with 80 attributes per event
costs more than parsing the event. So the decision is made before OpenTelemetry is touched:

1. If ``opentelemetry.sdk.trace`` was never imported, nobody can have installed an SDK
   tracer provider and nothing is traced (the API's default provider records nothing).
   This costs one dictionary lookup per received chunk, not per event.
2. Otherwise the global tracer provider is checked (cached per provider object): the API's
   proxy or no-op provider means "not configured".
3. Per event, a running accumulator against the event span ratio picks which events get a
   ``process_event`` span (a ratio of 0.01 traces exactly one event in a hundred, evenly
   spaced, without calling a random generator).
4. Attributes are built (by the parser's HeaderFlattener) only if the started span reports
   ``is_recording()``: an unsampled span gets no attribute dictionary at all.

Knobs, read on first use and settable with :func:`configure`:
``GENESIS_EVENT_SPAN_RATIO`` (0.0-1.0, default 1.0): share of events with a span;
``GENESIS_EVENT_SPAN_HEADERS`` (comma separated header names): the only headers recorded as
``event.header.*`` (default: every header, capped at 128 attributes).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from genesis.protocol.parser import ESLEvent, HeaderFlattener

logger = logging.getLogger(__name__)

_SDK_MODULE = "opentelemetry.sdk.trace"
_TRACER_NAME = "genesis"


class _State:
    """Module state: knobs, the accumulator, and the tracer cached per provider."""

    ratio: float | None = None
    headers: tuple[str, ...] | None = None
    accumulator = 0.0
    provider: object = None
    tracer: Tracer | None = None
    flattener: HeaderFlattener | None = None


def _parse_ratio(text: str | None) -> float:
    if text is None or not text.strip():
        return 1.0
    try:
        value = float(text)
    except ValueError:
        logger.warning("GENESIS_EVENT_SPAN_RATIO=%r is not a number; using 1.0", text)
        return 1.0
    return min(1.0, max(0.0, value))


def _parse_headers(text: str | None) -> tuple[str, ...] | None:
    if text is None or not text.strip():
        return None
    return tuple(h.strip() for h in text.split(",") if h.strip())


def configure(
    *,
    event_span_ratio: float | None = None,
    event_span_headers: list[str] | tuple[str, ...] | None = None,
    from_environment: bool = False,
) -> None:
    """Set the event span ratio and header allowlist (``from_environment`` re-reads both)."""
    if from_environment:
        _State.ratio = _parse_ratio(os.environ.get("GENESIS_EVENT_SPAN_RATIO"))
        _State.headers = _parse_headers(os.environ.get("GENESIS_EVENT_SPAN_HEADERS"))
    if event_span_ratio is not None:
        _State.ratio = min(1.0, max(0.0, float(event_span_ratio)))
    if event_span_headers is not None:
        _State.headers = tuple(event_span_headers) or None
    _State.accumulator = 0.0
    _State.flattener = None


def event_span_ratio() -> float:
    """The share of events that get a ``process_event`` span when tracing is configured."""
    if _State.ratio is None:
        configure(from_environment=True)
    assert _State.ratio is not None
    return _State.ratio


def tracer() -> Tracer | None:
    """The Genesis tracer if an SDK tracer provider is installed, else None (cheap)."""
    if _SDK_MODULE not in sys.modules:
        return None
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if provider is _State.provider:
        return _State.tracer
    _State.provider = provider
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        _State.tracer = None
    else:
        from genesis import __version__

        _State.tracer = provider.get_tracer(_TRACER_NAME, __version__)
    return _State.tracer


class EventSpans:
    """Per-chunk handle that decides, per event, whether to open a ``process_event`` span."""

    __slots__ = ("_flattener", "_ratio", "_tracer")

    def __init__(self, tracer_: Tracer, ratio: float, flattener: HeaderFlattener) -> None:
        self._tracer = tracer_
        self._ratio = ratio
        self._flattener = flattener

    def take(self) -> bool:
        """True for the events that get a span: evenly spaced, ``ratio`` of them."""
        ratio = self._ratio
        if ratio >= 1.0:
            return True
        acc = _State.accumulator + ratio
        if acc >= 1.0:
            _State.accumulator = acc - 1.0
            return True
        _State.accumulator = acc
        return False

    def start(self, event: ESLEvent) -> Any:
        """Start the span; attributes are flattened only when it is recording."""
        span = self._tracer.start_span("process_event")
        if span.is_recording():
            span.set_attributes(self._flattener.flatten(event))
        return span


def event_spans() -> EventSpans | None:
    """An EventSpans for the current chunk, or None when no event will be traced."""
    tracer_ = tracer()
    if tracer_ is None:
        return None
    ratio = event_span_ratio()
    if ratio <= 0.0:
        return None
    flattener = _State.flattener
    if flattener is None:
        from genesis.protocol.parser import HeaderFlattener

        flattener = _State.flattener = HeaderFlattener(_State.headers)
    return EventSpans(tracer_, ratio, flattener)
