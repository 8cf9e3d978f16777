"""OpenTelemetry: one trace from the collector's HTTP request through the Kafka record (W3C
trace context in its headers) to the pipeline's batch and its ClickHouse insert."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from clickflow.config import Settings
from clickflow.domains.ugc.pipeline import UgcHandler
from clickflow.exactly_once.intent_log import ClickHouseIntentLog
from clickflow.kafka.batch import BatchTrigger, Delivery
from clickflow.kafka.topics import TopicSpec
from clickflow.migrations import migrate_clickhouse
from clickflow.observability import tracing
from clickflow.pipelines import PipelineOptions, PipelineSpec, build_consumer
from clickflow.stores.clickhouse import clickhouse_client

from ..domains.ugc.support import ugc_config
from .conftest import StartCollector, read_raw

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    assert tracing.setup("test", exporter=exp)
    try:
        yield exp
    finally:
        tracing.shutdown()


def test_one_trace_from_http_to_insert(
    exporter: InMemorySpanExporter,
    start_collector: StartCollector,
    collector_settings: Settings,
    topic: str,
) -> None:
    migrate_clickhouse(collector_settings, ["ugc"])
    client = start_collector()
    data = {"element_type": "movie", "page_type": "category"}
    r = client.post(
        "/v1/events",
        json={"event": "element_click", "token": None, "data": data},
        headers={"traceparent": TRACEPARENT},  # the caller's trace is continued
    )
    assert r.status_code == 202, r.text
    assert len(read_raw(collector_settings, topic, 1)) == 1

    spec = PipelineSpec(
        "ugc-test",
        [TopicSpec(topic, 4)],
        "clickhouse",
        lambda s, _o: UgcHandler(s, ugc_config(topic), background_sweep=False),
        ClickHouseIntentLog,
    )
    trigger = BatchTrigger(max_records=10, max_seconds=0.2)
    options = PipelineOptions(trigger, Delivery.EXACTLY_ONCE, f"g-{topic}")
    consumer = build_consumer(collector_settings, spec, options)  # the real wiring
    ch = clickhouse_client(collector_settings)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while ch.query("SELECT count() FROM ugc_element_click").result_rows[0][0] < 1:
            assert time.monotonic() < deadline, "the event was not stored"
            time.sleep(0.1)
    finally:
        consumer.stop()
        thread.join(20)
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    http = by_name["POST /v1/events"]
    publish = by_name[f"publish {topic}"]
    batch = by_name["process ugc-test"]
    inserts = [s for s in spans if s.name.startswith("INSERT ")]
    assert inserts, [s.name for s in spans]
    assert http.kind is SpanKind.SERVER and publish.kind is SpanKind.PRODUCER
    assert batch.kind is SpanKind.CONSUMER and all(s.kind is SpanKind.CLIENT for s in inserts)
    # One trace: the caller's, continued through HTTP, Kafka and the pipeline.
    trace_ids = {s.context.trace_id for s in (http, publish, batch, *inserts)}
    assert trace_ids == {int(CLIENT_TRACE, 16)}
    assert http.parent.span_id == int("00f067aa0ba902b7", 16)
    assert publish.parent.span_id == http.context.span_id
    assert batch.parent.span_id == publish.context.span_id  # through the record's headers
    assert all(s.parent.span_id == batch.context.span_id for s in inserts)
    assert http.attributes["http.response.status_code"] == 202
    assert batch.attributes["messaging.batch.message_count"] == 1
    assert {s.attributes["db.collection.name"] for s in inserts} >= {"ugc_element_click"}


def test_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_EXPORTER_OTLP"):
            monkeypatch.delenv(name)
    assert tracing.setup("test") is False
    assert tracing.ENABLED is False
    with tracing.span("x") as s:  # the shared no-op
        assert s is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    try:
        assert tracing.setup("test") is True and tracing.ENABLED
    finally:
        tracing.shutdown()
    assert tracing.ENABLED is False
