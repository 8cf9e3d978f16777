"""OpenTelemetry tracing: collector request -> Kafka record -> pipeline batch -> store write.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (spans then go to it over OTLP/HTTP, with
the standard ``OTEL_*`` variables: ``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_TRACES_SAMPLER``...). When off, every hook is one check of :data:`ENABLED` per request
or per batch and nothing per record.

The trace context crosses Kafka as W3C ``traceparent``/``tracestate`` record headers, set by
the collector on each record of a request. A pipeline batch holds records of many requests:
its span continues the trace of its first traced record and links to the others (at most
:data:`MAX_LINKS`), the usual shape of a batch consumer's span.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from confluent_kafka import Message
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

#: True once :func:`setup` installed an exporter; every hook checks it first.
ENABLED = False
MAX_LINKS = 128
HEADERS = ("traceparent", "tracestate")

_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()
_propagator = TraceContextTextMapPropagator()
_OFF = nullcontext()

T = TypeVar("T")


def setup(service: str, exporter: SpanExporter | None = None) -> bool:
    """Trace this process as ``service`` when an OTLP endpoint is configured (or ``exporter``
    is given, tests: spans are then exported synchronously). Returns whether it is on."""
    global ENABLED, _provider, _tracer
    if exporter is None and (
        not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        and not os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true"
    ):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    shutdown()
    name = os.environ.get("OTEL_SERVICE_NAME") or f"clickflow-{service}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider, _tracer, ENABLED = provider, provider.get_tracer("clickflow"), True
    return True


def shutdown() -> None:
    """Flush and stop exporting (at exit; tests between set-ups)."""
    global ENABLED, _provider, _tracer
    ENABLED = False
    if _provider is not None:
        _provider.shutdown()
    _provider, _tracer = None, trace.NoOpTracer()


def tracer() -> trace.Tracer:
    return _tracer


def span(
    name: str,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: otel_context.Context | None = None,
):
    """A span as a context manager (current inside); a shared no-op one when tracing is off."""
    if not ENABLED:
        return _OFF
    return _tracer.start_as_current_span(name, parent, kind, attributes)


def context_from_http(headers: Mapping[bytes, bytes]) -> otel_context.Context | None:
    """The caller's trace (its ``traceparent`` header), to continue it; raw ASGI headers."""
    raw = headers.get(b"traceparent")
    if raw is None:
        return None
    carrier = {"traceparent": raw.decode("latin-1")}
    state = headers.get(b"tracestate")
    if state is not None:
        carrier["tracestate"] = state.decode("latin-1")
    return _propagator.extract(carrier)


def record_headers() -> list[tuple[str, bytes]]:
    """The current trace context as Kafka record headers (W3C trace context)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def _record_context(headers: list[tuple[str, bytes | None]]) -> trace.SpanContext | None:
    carrier = {k: v.decode("latin-1") for k, v in headers if k in HEADERS and isinstance(v, bytes)}
    if "traceparent" not in carrier:
        return None
    sc = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
    return sc if sc.is_valid else None


def start_batch_span(pipeline: str, messages: Iterable[Message], count: int) -> trace.Span:
    """The span of one pipeline batch: child of its first traced record, linked to the rest."""
    contexts: list[trace.SpanContext] = []
    seen: set[bytes] = set()
    for m in messages:
        headers = m.headers()
        if not headers:
            continue
        # The records of one request share their headers: parse each distinct one once.
        raw = next((v for k, v in headers if k == "traceparent"), None)
        if not isinstance(raw, bytes) or raw in seen:
            continue
        seen.add(raw)
        sc = _record_context(headers)
        if sc is not None:
            contexts.append(sc)
            if len(contexts) > MAX_LINKS:
                break
    parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0])) if contexts else None
    return _tracer.start_span(
        f"process {pipeline}",
        parent,
        trace.SpanKind.CONSUMER,
        {"clickflow.pipeline": pipeline, "messaging.batch.message_count": count},
        links=[trace.Link(sc) for sc in contexts[1:]],
    )


def bind(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` run in the current context, for work handed to another thread (writer pools)."""
    if not ENABLED:
        return fn
    ctx = contextvars.copy_context()
    return lambda *a, **kw: ctx.run(fn, *a, **kw)


def store_span(system: str, table: str, rows: int):
    """The span of one store write (a child of the batch span current on this thread)."""
    if not ENABLED:
        return _OFF
    attributes = {
        "db.system.name": system,
        "db.collection.name": table,
        "db.operation.name": "INSERT",
        "clickflow.rows": rows,
    }
    return _tracer.start_as_current_span(
        f"INSERT {table}", kind=trace.SpanKind.CLIENT, attributes=attributes
    )


class _TracedHandler:
    """A pipeline's handler inside a batch span (see :func:`traced`); the rest passes through."""

    def __init__(self, pipeline: str, inner: Any) -> None:
        self._pipeline = pipeline
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def handle(self, batch: Any) -> Any:
        s = start_batch_span(self._pipeline, batch.messages(), len(batch))
        with trace.use_span(s, end_on_exit=True):
            return self.inner.handle(batch)


class _TracedPipelinedHandler(_TracedHandler):
    def submit(self, batch: Any, before_write: Callable[[Any], None]) -> Any:
        s = start_batch_span(self._pipeline, batch.messages(), len(batch))
        try:
            with trace.use_span(s, end_on_exit=False):
                future = self.inner.submit(batch, before_write)
        except BaseException:
            s.end()
            raise
        future.add_done_callback(lambda _f: s.end())  # the span lasts until the writes end
        return future


def traced(pipeline: str, handler: T) -> T:
    """``handler`` with a span per batch when tracing is on (else ``handler`` itself).

    The span is current while the handler runs, so its store writes are children; a handler
    that writes on its own threads hands them the context with :func:`bind`."""
    if not ENABLED:
        return handler
    if callable(getattr(handler, "submit", None)):
        return _TracedPipelinedHandler(pipeline, handler)  # type: ignore[return-value]
    return _TracedHandler(pipeline, handler)  # type: ignore[return-value]
