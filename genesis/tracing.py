"""Lazy OpenTelemetry spans: paid for only when they will be recorded.

A busy FreeSWITCH sends thousands of events a second; a span with 80 attributes per event
costs more than parsing the event. So the decision is made before OpenTelemetry is touched:

1. If ``opentelemetry.sdk.trace`` was never imported, nobody can have installed an SDK
   tracer provider and nothing is traced (the API's default provider records nothing).
   This costs one dictionary lookup per received chunk, not per event.
2. Otherwise the global tracer provider is checked (cached per provider object): the API's
   proxy or no-op provider means "not configured".
3. An integer accumulator against the event span ratio picks which events get a
   ``process_event`` span (a ratio of 0.01 traces exactly one event in a hundred, evenly
   spaced, without calling a random generator). It runs once per traced event and yields
   the number of events to let through before the next one: the engine cuts each
   received chunk where the traced event is (moving the cut past the replies and other
   non-events before it), so an untraced event takes the same loop, at the same cost,
   as with tracing off.
4. A traced event gets an :class:`EventSpan`: the engine notes its start and end times
   around the event's sync handlers, and the SDK span is started later, in a batch with
   the connection's other event spans (:class:`SpanBatch`), with those exact times. An
   SDK span costs tens of microseconds of Python, several times that when it runs between
   thousands of parsed events that pushed its code out of the CPU caches; in a batch the
   code stays warm. Whatever needs the real span sooner (a handler opening a child span,
   sending a command, propagating the context) starts it on the spot.
5. Attributes are built (by the parser's HeaderFlattener) only if the SDK span reports
   ``is_recording()``: a span the SDK's sampler drops gets no attribute dictionary at all.

What a recorded event span costs is dominated by the SDK, not by Genesis: the SDK's
``set_attributes`` validates every attribute in Python (~1 us each; an event has ~75), which
alone is more than a hundred untraced events. The flattener's output needs none of that
validation (keys are non-empty ``str``, values ``str`` or tuples of ``str``), so for the SDK's
own span class, when no attribute length limit is set and the count limit leaves room, the
attributes are stored directly, exactly as ``set_attributes`` would store them; any other
span, limit or SDK layout goes through ``set_attributes``.

Because the attributes are read when the SDK span starts, after the engine routed the
event, tracing changes nothing in how an event is handled: a malformed header line that no
handler reads is recorded as the span's error status, and the connection goes on, as it does
untraced. A handler that changes the event before then changes the recorded attributes.

Trace shape: a connection lives for days and receives millions of events, and a trace is
meant to be one operation; backends cannot show (or even store) a trace that grows for a
week. So each ``process_event`` span is the root of its own trace, started from an explicit
empty context. Its headers name the FreeSWITCH that sent it (``event.header.core_uuid``,
``event.header.freeswitch_hostname``); with ``GENESIS_EVENT_SPAN_LINKS`` it also carries an
OpenTelemetry Link to its connection's span (``inbound_connect`` /
``outbound_handle_connection``). That is opt-in because the SDK builds a link's containers
anew for every span: about a third of what starting and ending the span costs. While the
engine dispatches a chunk, the current context is that empty one (untraced events' handlers
start root spans, never children of the connection span) or, for a traced event, its
``process_event`` span; an async handler's coroutine runs later on a worker task, inside
the context its event had (the dispatcher keeps it with the queued coroutine). Commands
(``send_command``) are children of whatever span is current in the task that sends them.

Knobs, read on first use and settable with :func:`configure`:
``GENESIS_EVENT_SPAN_RATIO`` (0.0-1.0, default 1.0): share of events with a span;
``GENESIS_EVENT_SPAN_HEADERS`` (comma separated header names): the only headers recorded as
``event.header.*`` (default: every header, capped at 128 attributes);
``GENESIS_EVENT_SPAN_LINKS`` (``1``/``true``/``yes``/``on``, default off): link each
``process_event`` span to its connection's span. The ratio is decided
before OpenTelemetry is touched; an SDK sampler decides only after an SDK span was started,
so it is the ratio that makes unsampled events free. :func:`flush` hands pending event spans
to the SDK at once (before ``force_flush()`` in a test or at a custom shutdown).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from time import time_ns
from typing import TYPE_CHECKING, Any

from genesis.exceptions import ProtocolError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Span, Tracer

    from genesis._event_span import EventSpan
    from genesis.protocol.dispatch import Dispatcher
    from genesis.protocol.parser import ESLEvent, HeaderFlattener

logger = logging.getLogger(__name__)

_SDK_MODULE = "opentelemetry.sdk.trace"
_TRACER_NAME = "genesis"
# The ratio accumulator counts in billionths, so decimal ratios such as 0.01 are exact
# (a float accumulator drifts: a hundred 0.01 steps sum to 0.9999999999999999).
SPAN_UNIT = 1_000_000_000
# A connection's completed event spans wait for the SDK until this many are pending, or
# this many seconds after the first of them (see SpanBatch).
BATCH_SIZE = 32
BATCH_DELAY = 0.2
# Guards span materialization and batch hand-over: a span's context can reach another
# thread (asyncio.to_thread copies it), and flush() may be called from any thread.
LOCK = threading.Lock()


class _State:
    """Module state: knobs, the tracer cached per provider, the current EventSpans.

    Also every connection's span batch, for :func:`flush` and the exit hook.
    """

    # opentelemetry.trace once the SDK was seen: an import statement per received chunk
    # would run importlib's Python-level ``from`` handling every time.
    trace_api: Any = None
    ratio: float | None = None
    headers: tuple[str, ...] | None = None
    links = False
    provider: object = None
    tracer: Tracer | None = None
    flattener: HeaderFlattener | None = None
    spans: EventSpans | None = None
    # A weak reference to every connection's batch, which removes itself once its batch
    # is gone. Added to, removed from and copied in single calls of the set's own, so
    # any thread may do either without a lock.
    batches: set[weakref.ref[SpanBatch]] = set()
    exit_hook = False
    # context_switch(), found once.
    switch: tuple[Callable[[Context], object], Callable[[Any], None]] | None = None


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


def _parse_flag(text: str | None) -> bool:
    return text is not None and text.strip().lower() in ("1", "true", "yes", "on")


def configure(
    *,
    event_span_ratio: float | None = None,
    event_span_headers: list[str] | tuple[str, ...] | None = None,
    event_span_links: bool | None = None,
    from_environment: bool = False,
) -> None:
    """Set the event span ratio, header allowlist and connection links.

    The environment is read first (again with ``from_environment``): a knob passed here
    overrides its variable without hiding the variables of the other knobs.
    """
    if from_environment or _State.ratio is None:
        _State.ratio = _parse_ratio(os.environ.get("GENESIS_EVENT_SPAN_RATIO"))
        _State.headers = _parse_headers(os.environ.get("GENESIS_EVENT_SPAN_HEADERS"))
        _State.links = _parse_flag(os.environ.get("GENESIS_EVENT_SPAN_LINKS"))
    if event_span_ratio is not None:
        _State.ratio = min(1.0, max(0.0, float(event_span_ratio)))
    if event_span_headers is not None:
        _State.headers = tuple(event_span_headers) or None
    if event_span_links is not None:
        _State.links = bool(event_span_links)
    _State.flattener = None
    _State.spans = None


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
    trace = _State.trace_api
    if trace is None:
        from opentelemetry import trace

        _State.trace_api = trace
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


def connection_links(span: Span) -> tuple[Link, ...]:
    """The links a connection's ``process_event`` spans carry when links are on: to ``span``.

    Built once per connection; the tuple and its Link are shared by all its event spans.
    """
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return ()
    from opentelemetry.trace import Link

    return (Link(span_context),)


class EventSpans:
    """The ``process_event`` policy of one tracer and configuration, reused by every chunk.

    ``gap`` is public because the engine reads and advances it per chunk: it is the
    number of events still to route untraced before the next traced one, and
    :meth:`next_gap` gives the following gap when that one arrives.
    """

    __slots__ = (
        "_accumulator",
        "_bounded",
        "_context",
        "_event_span",
        "_flattener",
        "_link",
        "_reset",
        "_root",
        "_set",
        "_span_class",
        "_span_key",
        "_step",
        "_tracer",
        "gap",
    )

    def __init__(self, tracer_: Tracer, ratio: float, flattener: HeaderFlattener,
                 link: bool) -> None:
        # OpenTelemetry is imported here, once an SDK is installed, not with Genesis.
        from opentelemetry import context
        from opentelemetry.trace.propagation import _SPAN_KEY

        from genesis._event_span import EventSpan

        self._event_span = EventSpan
        self._tracer = tracer_
        self._flattener = flattener
        self._link = link
        self._step = max(1, round(ratio * SPAN_UNIT))
        self._accumulator = 0
        self.gap = self.next_gap()
        self._context = context.Context
        self._span_key = _SPAN_KEY
        self._set, self._reset = context_switch()
        # No current span: the parent of every process_event span, and the context
        # untraced events are dispatched in.
        self._root: Context = context.Context()
        self._span_class, self._bounded = _direct_storage()

    def next_gap(self) -> int:
        """Untraced events between the event being traced now and the next traced one.

        The accumulator gains the ratio (in :data:`SPAN_UNIT` parts) per event and an
        event is traced when it reaches a whole unit, which is then taken off: this
        advances it to the next such event at once.
        """
        steps = -(-(SPAN_UNIT - self._accumulator) // self._step)
        self._accumulator += steps * self._step - SPAN_UNIT
        return steps - 1

    def enter(self, dispatcher: Dispatcher) -> object:
        """Make the empty context current for a chunk's dispatch; returns the token."""
        dispatcher.trace_context = self._root
        return self._set(self._root)

    def leave(self, dispatcher: Dispatcher, token: object) -> None:
        """Undo :meth:`enter`."""
        dispatcher.trace_context = None
        self._reset(token)

    def dispatch(
        self, dispatcher: Dispatcher, event: ESLEvent, name: str | None, batch: SpanBatch,
    ) -> None:
        """Dispatch ``event`` inside its ``process_event`` span, then hand that to ``batch``.

        The span is current while the sync handlers run, so spans they open are its
        children, and the dispatcher queues its context with the coroutines async
        handlers return. Handler errors never reach here (the dispatcher logs them).
        Called between :meth:`enter` and :meth:`leave`, where the current context is the
        empty root: the span's context is built directly, as ``set_span_in_context``
        would build it from the root. The span and its context are fresh objects that
        :meth:`prepare` usually made ahead, in the batch's last flush (see there).
        """
        ready = batch.ready
        if ready and ready[-1][0]._spans is self:
            span, context = ready.pop()
            span._event = event
            span._start = time_ns()
        else:
            span, context = self._fresh(batch.links, event, time_ns())
        token = self._set(context)
        dispatcher.trace_context = context
        try:
            dispatcher.dispatch(event, name)
        finally:
            dispatcher.trace_context = self._root
            self._reset(token)
            span.end_time = time_ns()
            batch.add(span)

    def prepare(self, batch: SpanBatch, count: int) -> None:
        """Make ``count`` event spans, each with its context, for ``batch``'s next events.

        An event span and its context cost two object constructions of Python classes.
        Built one at a time, once per hundred events at a 1% ratio, they run with their
        code and type data evicted by the untraced events in between. Made in a loop
        after a flush, only the first is cold (``bench/test_dispatch_bench.py``, caches
        evicted: a traced dispatch over a plain one, median of five runs, 26.6 us before,
        21.3 us after). Each is still a new object used by one event only.
        """
        links = batch.links
        made = [self._fresh(links, None, 0) for _ in range(count)]
        with LOCK:
            # The connection may have been linked to a new connection span meanwhile.
            if batch.links is links:
                batch.ready = made

    def _fresh(self, links: tuple[Link, ...], event: ESLEvent | None,
               start_time: int) -> tuple[EventSpan, Context]:
        """A new event span (carrying ``links`` when links are on) and its context."""
        span = self._event_span(self, event, links if self._link else (), start_time)
        return span, self._context({self._span_key: span})

    def begin(self, links: tuple[Link, ...], start_time: int) -> Span:
        """The SDK span of an :class:`EventSpan`, started at its time; no attributes yet."""
        return self._tracer.start_span("process_event", self._root, links=links,
                                       start_time=start_time)

    def attribute(self, span: Span, event: ESLEvent) -> None:
        """Record ``event``'s attributes on ``span``, the SDK span :meth:`begin` started.

        The attributes are read from the event now, so a handler that changed the event
        changed them. Reading every header can meet a malformed line, which the
        engine never read (it only routed the event): the span then records the error
        instead of the headers, and the connection goes on as it does untraced.
        """
        if span.is_recording():
            try:
                self._record(span, event)
            except ProtocolError as exc:
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR, f"malformed event: {exc}"))

    def _record(self, span: Span, event: ESLEvent) -> None:
        """Store the event's attributes as the SDK's ``set_attributes`` would, minus its checks.

        The flattener's values are already what the SDK would store (``str`` or a tuple
        of ``str``), so for the SDK's own span, with no value length limit and room for
        the flattener's cap, the flattener's table (sized for the event's lines once,
        where filling the SDK's empty one would grow it four times) replaces the span's
        empty one, as the SDK's own ``__deepcopy__`` sets it. Another
        span class, a length limit (values would be truncated) or a smaller count limit
        (the SDK decides what to drop) goes through ``set_attributes``.
        """
        flattener = self._flattener
        bounded: Any = None
        if type(span) is self._span_class:
            bounded = getattr(span, "_attributes", None)
        if (bounded is None or type(bounded) is not self._bounded
                or bounded.max_value_len is not None or bounded._dict
                or (bounded.maxlen is not None and flattener.max_attributes > bounded.maxlen)):
            span.set_attributes(flattener.flatten(event))
            return
        bounded._dict = flattener.flatten(event)


def context_switch() -> tuple[Callable[[Context], object], Callable[[Any], None]]:
    """How a dispatch makes a context current and restores the previous one.

    OpenTelemetry's ``attach``/``detach`` are two Python calls deep each; with its default
    runtime context they end in one ContextVar's ``set`` and ``reset``, which are used
    directly. A runtime context configured through ``OTEL_PYTHON_CONTEXT`` keeps the
    public functions. Found once, on first use (OpenTelemetry is imported then).
    """
    switch = _State.switch
    if switch is None:
        switch = _State.switch = _find_context_switch()
    return switch


def _find_context_switch() -> tuple[Callable[[Context], object], Callable[[Any], None]]:
    from contextvars import ContextVar

    from opentelemetry import context
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    runtime = getattr(context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(var, ContextVar):
        return var.set, var.reset
    return context.attach, context.detach


def _direct_storage() -> tuple[Any, Any]:
    """The SDK span class and attribute container :meth:`EventSpans._record` may fill.

    Checked once against the installed SDK: a release that lays them out differently
    gets ``(None, None)`` and every span takes the public ``set_attributes`` path.
    """
    from opentelemetry.attributes import BoundedAttributes
    from opentelemetry.sdk import trace as sdk_trace

    span_class = getattr(sdk_trace, "_Span", None)
    probe = BoundedAttributes(maxlen=1, immutable=False)
    if (span_class is None or not isinstance(getattr(probe, "_dict", None), dict)
            or not hasattr(probe, "max_value_len") or not hasattr(probe, "maxlen")):
        return None, None
    return span_class, BoundedAttributes


class SpanBatch:
    """One connection's completed :class:`EventSpan` objects waiting for the SDK.

    Flushed when :data:`BATCH_SIZE` are pending, :data:`BATCH_DELAY` seconds after the
    first (a timer on the connection's loop), when the connection is lost, by
    :func:`flush`, and at interpreter exit (before the SDK's own exit hook, which was
    registered earlier). Each SDK span gets its recorded start and end times, so
    only export is later, by a fraction of a second.
    """

    __slots__ = ("__weakref__", "_armed", "_pending", "links", "ready")

    def __init__(self) -> None:
        # Appended by the connection's loop without a lock (a deque's append and popleft
        # are atomic); taken only by flush(), under LOCK, from any thread.
        self._pending: deque[EventSpan] = deque()
        self._armed = False
        # Links of this connection's event spans: to its connection span, once known.
        self.links: tuple[Link, ...] = ()
        # Event spans and their contexts made ahead for the next traced events
        # (EventSpans.prepare); taken from the end, only by the connection's loop.
        self.ready: list[tuple[EventSpan, Context]] = []
        _State.batches.add(weakref.ref(self, _State.batches.discard))

    def link(self, links: tuple[Link, ...]) -> None:
        """Set the links of the connection's next event spans (the ones made ahead go)."""
        with LOCK:
            self.links = links
            self.ready = []

    def close(self) -> None:
        """Flush, as the connection is gone: nothing more is made ahead."""
        self.flush(refill=False)
        self.ready = []

    def add(self, span: EventSpan) -> None:
        """Queue ``span`` (the loop's thread only). A flush running meanwhile on another
        thread takes it or leaves it for the next one: lock-free, because taking a lock
        here was an eighth of a traced event's dispatch (cache misses in its cold code)."""
        pending = self._pending
        pending.append(span)
        if len(pending) >= BATCH_SIZE:
            self.flush()
        elif not self._armed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()  # no loop to wait on (a dispatch outside asyncio)
                return
            self._armed = True
            loop.call_later(BATCH_DELAY, self._timer)

    def _timer(self) -> None:
        self._armed = False
        self.flush()

    def flush(self, *, refill: bool = True) -> None:
        """Complete every pending span (in the order their events arrived), then make as
        many event spans ahead for the next events (unless ``refill`` is False).

        In three passes over the batch, each running one kind of code (the SDK starting
        spans, the flattener, the SDK ending spans) instead of all of it span by span:
        each pass then finds its code and data still in the CPU caches. The first two
        run under :data:`LOCK` and a span is handed to its EventSpan only once its
        attributes are recorded, so no other thread sees it without them.
        """
        with LOCK:
            queue = self._pending
            # Only flushes take spans, under LOCK: the length cannot shrink meanwhile.
            pending = [queue.popleft() for _ in range(len(queue))]
            started = []
            for span in pending:
                try:
                    real = span.begin()
                except Exception:
                    logger.exception(_FAILED)
                    continue
                if real is not None:
                    started.append((span, real))
            for span, real in started:
                try:
                    span.attribute(real)
                except Exception:
                    logger.exception(_FAILED)
        for span in pending:
            try:
                span.complete()
            except Exception:
                logger.exception(_FAILED)
        if refill and pending:
            pending[-1]._spans.prepare(self, len(pending))


# An exporter's or processor's failure must not stop the other spans of a batch or reach
# the connection that happened to flush: it is logged with this.
_FAILED = "completing a process_event span failed"


def flush() -> None:
    """Hand every pending ``process_event`` span to the SDK now.

    Call it before ``TracerProvider.force_flush()`` when every event span must be
    exported at that point (a test, a shutdown without stopping the connections).
    """
    for ref in list(_State.batches):
        batch = ref()
        if batch is not None and batch._pending:
            batch.flush()


def event_spans() -> EventSpans | None:
    """The EventSpans in force, or None when no event will be traced (cheap, per chunk)."""
    tracer_ = tracer()
    if tracer_ is None:
        return None
    spans = _State.spans
    if spans is not None and spans._tracer is tracer_:
        return spans
    ratio = event_span_ratio()
    if ratio <= 0.0:
        return None
    flattener = _State.flattener
    if flattener is None:
        from genesis.protocol.parser import HeaderFlattener

        flattener = _State.flattener = HeaderFlattener(_State.headers)
    spans = _State.spans = EventSpans(tracer_, ratio, flattener, _State.links)
    if not _State.exit_hook:
        # Registered after the SDK provider registered its shutdown, so it runs first.
        _State.exit_hook = True
        atexit.register(flush)
    return spans
