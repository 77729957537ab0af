"""An OpenTelemetry SDK that keeps its spans in memory, installed as one test's global provider."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler


def install_sdk(monkeypatch: pytest.MonkeyPatch, *, limits: SpanLimits | None = None,
                sampler: Sampler | None = None) -> tuple[InMemorySpanExporter, TracerProvider]:
    """A TracerProvider exporting to memory, returned by ``get_tracer_provider()`` for the test.

    ``get_tracer_provider`` is patched rather than set: the API allows setting the global
    provider only once per process.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    return exporter, provider
