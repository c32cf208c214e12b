"""OpenTelemetry traces from the API through the dispatcher into workflows and activities.

Off unless ``PULSE_OTLP_ENDPOINT`` is set (or a test passes an exporter). The API stores each accepted
event's ``traceparent`` in the event log; the dispatcher continues that trace when it hands an event to
its own workflow, and links a partition's hand-off span to the traces of the events it carries (one
signal serves many requests). Temporal's ``TracingInterceptor`` carries the context on into workflows and
activities.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from temporalio.client import Interceptor

from nftpulse.core.settings import Settings

_PROPAGATOR = TraceContextTextMapPropagator()
_enabled = False
#: Links per hand-off span: enough to follow a batch back to its requests without bloating the span.
MAX_LINKS = 32

tracer = trace.get_tracer("pulse")


def configure(settings: Settings, service: str, exporter: SpanExporter | None = None) -> bool:
    """Install a tracer provider exporting over OTLP/HTTP (or to ``exporter``); False when not configured."""
    global _enabled
    if exporter is None and not settings.otlp_endpoint:
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def enabled() -> bool:
    return _enabled


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def client_interceptors() -> list[Interceptor]:
    """Temporal interceptors for a client (and the workers built on it) when tracing is on."""
    if not _enabled:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def _span_context(traceparent: str | None) -> trace.SpanContext | None:
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None


@contextmanager
def continue_trace(name: str, traceparent: str | None, **attributes: str) -> Iterator[Span]:
    """A span that continues the trace of one event's request."""
    parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else context.get_current()
    with tracer.start_as_current_span(name, context=parent, attributes=attributes) as span:
        yield span


@contextmanager
def linked_span(name: str, traceparents: Iterable[str | None], **attributes: str) -> Iterator[Span]:
    """A new span linked to the traces of the requests whose events it carries."""
    links = []
    for tp in traceparents:
        span_context = _span_context(tp)
        if span_context is not None:
            links.append(Link(span_context))
        if len(links) >= MAX_LINKS:
            break
    with tracer.start_as_current_span(name, links=links, attributes=attributes) as span:
        yield span
