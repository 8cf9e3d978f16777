"""Two consumer groups on ``events.telecom`` (8 partitions, keyed by user_id):

* ``telecom-ingest``    decode + validate, write ``events_raw`` (dedup by source_id, event_id);
* ``telecom-aggregate`` add each event once to ``agg_day`` / ``agg_month`` / global, then
  publish the new aggregate version to Redis (the API cache key).

Delivery is at-least-once: offsets are committed by the framework after ``handle`` returned,
i.e. after the batch's transaction committed. The writes are idempotent: each group inserts
the events' (source_id, event_id) into its own key table (``event_keys``, ``agg_applied``)
in the same transaction as the rows or the sums, ON CONFLICT DO NOTHING, and writes only the
events whose key was new. A redelivered batch, or an event re-sent with another
``started_at``, changes nothing: the effect is exactly-once. Invalid
records go to ``events.telecom.dlq`` with the reason (sent by the ingestor only, so each
appears there once).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import Counter, Histogram

from clickflow.config import Settings
from clickflow.domains.telecom.cache import AggCache, publish_quietly
from clickflow.domains.telecom.config import telecom_config
from clickflow.domains.telecom.events import DecodeErrors, TelecomEvent, decode
from clickflow.domains.telecom.store import AggregateWriter, RawWriter, WriteResult
from clickflow.kafka.batch import Batch, BatchTrigger, Delivery
from clickflow.kafka.dlq import DeadLetter
from clickflow.kafka.topics import TopicSpec
from clickflow.pipelines import PipelineOptions, PipelineSpec, stores_answer
from clickflow.stores.postgres import postgres_url

EVENTS = Counter(
    "clickflow_telecom_events",
    "Telecom events handled, by outcome (written, duplicate, invalid)",
    ["pipeline", "outcome"],
)
WRITE_SECONDS = Histogram(
    "clickflow_telecom_write_seconds",
    "PostgreSQL transaction time per batch",
    ["pipeline"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CACHE_PUBLISH_FAILURES = Counter(
    "clickflow_telecom_cache_publish_failures", "Aggregate versions not published to Redis"
)


def decode_batch(batch: Batch) -> tuple[list[TelecomEvent], list[DeadLetter]]:
    events: list[TelecomEvent] = []
    letters: list[DeadLetter] = []
    for m in batch.messages():
        value = m.value()
        if not value:
            letters.append(DeadLetter(m, "empty record"))
            continue
        try:
            events.append(decode(value))
        except DecodeErrors as e:
            letters.append(DeadLetter(m, f"invalid telecom event: {e}"))
    return events, letters


class TelecomHandler:
    """Decode, validate, write with ``write``; then ``after_commit`` (cache publish).
    ``close`` releases what ``write`` holds (its PostgreSQL connection)."""

    def __init__(
        self,
        name: str,
        write: Callable[[list[TelecomEvent]], WriteResult],
        after_commit: Callable[[WriteResult], None] | None = None,
        dead_letters: bool = True,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._write = write
        self._after_commit = after_commit
        self._dead_letters = dead_letters
        self._close = close

    def close(self) -> None:
        """Called by the consumer framework when the consumer stops or dies."""
        if self._close is not None:
            self._close()

    def handle(self, batch: Batch) -> list[DeadLetter]:
        events, letters = decode_batch(batch)
        started = time.monotonic()
        result = self._write(events)
        WRITE_SECONDS.labels(self.name).observe(time.monotonic() - started)
        EVENTS.labels(self.name, "written").inc(result.inserted)
        EVENTS.labels(self.name, "duplicate").inc(len(events) - result.inserted)
        if letters:
            EVENTS.labels(self.name, "invalid").inc(len(letters))
        if self._after_commit is not None:
            self._after_commit(result)
        return letters if self._dead_letters else []


def build_ingest(settings: Settings, _opts: PipelineOptions) -> TelecomHandler:
    writer = RawWriter(postgres_url(settings))
    return TelecomHandler("telecom-ingest", writer.write, close=writer.close)


def build_aggregate(settings: Settings, _opts: PipelineOptions) -> TelecomHandler:
    cache = None
    if settings.redis_url:
        from clickflow.stores.redis import redis_client

        url = postgres_url(settings)
        cache = AggCache(redis_client(settings), url, telecom_config().cache_ttl_s)

    def after_commit(result: WriteResult) -> None:
        if not publish_quietly(cache, result.version):
            CACHE_PUBLISH_FAILURES.inc()

    # The ingestor already sends invalid records to the DLQ; the aggregator skips them.
    writer = AggregateWriter(postgres_url(settings))
    return TelecomHandler(
        "telecom-aggregate", writer.write, after_commit, dead_letters=False, close=writer.close
    )


def topic_spec() -> TopicSpec:
    opts = telecom_config()
    return TopicSpec(opts.topic, opts.partitions)


def _options() -> PipelineOptions:
    return PipelineOptions(
        trigger=BatchTrigger(max_records=10000, max_seconds=0.5),
        delivery=Delivery.AT_LEAST_ONCE,
    )


PIPELINES = [
    PipelineSpec(
        name="telecom-ingest",
        topics=[topic_spec()],
        store="postgres",
        build_handler=build_ingest,
        default_options=_options(),
        health_check=stores_answer("postgres"),
    ),
    PipelineSpec(
        name="telecom-aggregate",
        topics=[topic_spec()],
        store="postgres",
        build_handler=build_aggregate,
        default_options=_options(),
        health_check=stores_answer("postgres"),
    ),
]
