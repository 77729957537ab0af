"""The ``process_event`` span of one traced event, started in the SDK only when needed.

Imported by :class:`genesis.tracing.EventSpans`, which exists only once an SDK tracer
provider is installed: importing Genesis does not import OpenTelemetry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry.trace import Span, Status, StatusCode

from genesis import tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Link, SpanContext
    from opentelemetry.util import types

    from genesis.protocol.parser import ESLEvent
    from genesis.tracing import EventSpans


class EventSpan(Span):
    """A ``process_event`` span whose SDK span is started only when it is needed.

    Starting an SDK span costs tens of microseconds of Python, several times that when
    it runs between thousands of parsed events that have pushed its code out of the
    CPU caches. So the engine records the start and end times and queues the span on
    its connection's :class:`genesis.tracing.SpanBatch`, which starts and ends the SDK
    spans together, with those exact times. Anything that needs the real span sooner
    gets it at once: asking for the span context (a handler opening a child span, a
    command sent from a handler, context propagation) or changing the span starts the
    SDK span on the spot.
    """

    __slots__ = ("_event", "_links", "_real", "_spans", "_start", "end_time")

    def __init__(self, spans: EventSpans, event: ESLEvent | None, links: tuple[Link, ...],
                 start_time: int) -> None:
        # Made ahead (EventSpans.prepare), a span gets its event and start time when its
        # event is dispatched.
        self._spans = spans
        self._event: ESLEvent | None = event
        self._links = links
        self._start = start_time
        self._real: Span | None = None
        # Set by the engine once the event's sync handlers have returned.
        self.end_time: int | None = None

    def _span(self) -> Span:
        real = self._real
        if real is None:
            with tracing.LOCK:
                real = self._real
                if real is None:
                    real = self.begin()
                    assert real is not None
                    self.attribute(real)
        return real

    def begin(self) -> Span | None:
        """Start the SDK span, unless something did already (None then); the caller holds
        ``tracing.LOCK`` and passes the span to :meth:`attribute`."""
        if self._real is not None:
            return None
        return self._spans.begin(self._links, self._start)

    def attribute(self, real: Span) -> None:
        """Record the event's attributes on ``real`` (from :meth:`begin`), then hand it
        out: the SDK span is this span's from now on, even if recording failed."""
        event = self._event
        assert event is not None
        try:
            self._spans.attribute(real, event)
        finally:
            self._real = real
            self._event = None

    def complete(self) -> None:
        """Start the SDK span if nothing did yet, and end it at the recorded time."""
        real = self._span()
        if real.is_recording():
            real.end(self.end_time)

    def get_span_context(self) -> SpanContext:
        return self._span().get_span_context()

    def is_recording(self) -> bool:
        real = self._real
        return True if real is None else real.is_recording()

    def end(self, end_time: int | None = None) -> None:
        self._span().end(end_time)

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        self._span().set_attributes(attributes)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        self._span().set_attribute(key, value)

    def add_event(self, name: str, attributes: types.Attributes = None,
                  timestamp: int | None = None) -> None:
        self._span().add_event(name, attributes, timestamp)

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        self._span().add_link(context, attributes)

    def update_name(self, name: str) -> None:
        self._span().update_name(name)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self._span().set_status(status, description)

    def record_exception(self, exception: BaseException, attributes: types.Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        self._span().record_exception(exception, attributes, timestamp, escaped)

    def __repr__(self) -> str:
        state = "pending" if self._real is None else repr(self._real)
        return f"EventSpan({state})"
