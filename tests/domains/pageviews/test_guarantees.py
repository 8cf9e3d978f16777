"""The framework's guarantees through the real page-view pipeline (tansu + chDB + Redis):
a record ClickHouse itself rejects is isolated to the DLQ, a chunk spanning 150 monthly
partitions is stored (and its replay dropped), and "in the future" is judged against the
record's Kafka timestamp."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from clickflow.config import Settings
from clickflow.domains.pageviews.pipeline import PageViewHandler, stores_healthy
from clickflow.exactly_once.intent_log import ClickHouseIntentLog
from clickflow.kafka.batch import Batch, BatchTrigger, Chunk, Delivery
from clickflow.kafka.config import consumer_config, producer_config
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from clickflow.migrations import migrate_clickhouse
from clickflow.stores.clickhouse import clickhouse_client
from tests.kafka.test_batch_consumer import read_all

from .support import ROLLUP_SQL


@pytest.fixture
def pv_settings(settings: Settings, redis_url: str) -> Settings:
    s = settings.model_copy(update={"redis_url": redis_url})
    migrate_clickhouse(s, ["pageviews"])
    return s


def view(page: str, when: datetime, user: str = "u1", ms: int = 1000) -> bytes:
    return orjson.dumps(
        {
            "page_id": page,
            "user_id": user,
            "view_duration_ms": ms,
            "timestamp": when.isoformat(),
            "is_bounce": False,
        }
    )


def send(settings: Settings, topic: str, values: list[bytes], kafka_ms: int | None = None) -> None:
    producer = EventProducer(producer_config(settings))
    for i, v in enumerate(values):
        producer.raw.produce(topic, v, key=str(i).encode(), timestamp=kafka_ms or 0)
    assert producer.flush(30) == 0


def pipeline(settings: Settings, topic: str, **kw) -> BatchConsumer:
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)])
    return BatchConsumer(
        name="pageviews-test",
        topics=[topic],
        handler=PageViewHandler(settings),
        consumer_conf=consumer_config(settings, f"g-{topic}"),
        dlq_producer=EventProducer(producer_config(settings, **{"linger.ms": 1})),
        trigger=BatchTrigger(max_records=2000, max_seconds=0.3),
        delivery=Delivery.EXACTLY_ONCE,
        intent_log=ClickHouseIntentLog(settings),
        backoff_initial=0.05,
        backoff_max=0.5,
        **kw,
    )


def run_until(consumer: BatchConsumer, cond, timeout: float = 60) -> None:
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    try:
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        consumer.stop()
        t.join(30)
    assert cond(), "not reached before the timeout"


def test_a_record_clickhouse_rejects_goes_to_the_dlq_the_rest_once(
    pv_settings: Settings, topic: str
) -> None:
    ch = clickhouse_client(pv_settings)
    # The store refuses one record (what nobody validated): a constraint on the raw table.
    ch.command("ALTER TABLE page_views_raw ADD CONSTRAINT no_poison CHECK page_id != 'poison'")
    now = datetime.now(UTC).replace(microsecond=0)
    values = [view(f"/p{i % 7}", now - timedelta(seconds=i), user=f"u{i}") for i in range(1500)]
    values[321] = view("poison", now, user="x")
    send(pv_settings, topic, values)
    consumer = pipeline(pv_settings, topic, health_check=lambda: stores_healthy(pv_settings))
    stored = lambda: ch.command("SELECT count() FROM page_views_raw")  # noqa: E731
    run_until(consumer, lambda: stored() >= 1499 and consumer.stats.dead_letters >= 1)
    time.sleep(1)
    assert stored() == 1499
    assert ch.command("SELECT uniqExact(event_id) FROM page_views_raw") == 1499
    views = ch.command("SELECT sumMerge(view_count) FROM page_views_agg_minute")
    assert int(views) == 1499  # the rollup holds each stored view once
    dead = read_all(pv_settings, dlq_topic(topic), 1)
    assert [m.value() for m in dead] == [values[321]]
    reason = dict(dead[0].headers())["dlq.reason"].decode()
    assert "store rejected the record" in reason and "no_poison" in reason


def test_a_chunk_spanning_150_monthly_partitions_is_stored_and_its_replay_dropped(
    pv_settings: Settings, topic: str
) -> None:
    ch = clickhouse_client(pv_settings)
    for table in ("page_views_raw", "page_views_agg_minute", "page_views_agg_hour"):
        ch.command(f"ALTER TABLE {table} REMOVE TTL")  # history import: keep every month
    start = datetime(2013, 1, 15, 12, 0, tzinfo=UTC)
    values = [view("/history", start + timedelta(days=31 * i), user=f"u{i}") for i in range(150)]
    ensure_topics(pv_settings.kafka_bootstrap, [TopicSpec(topic, 1)])
    send(pv_settings, topic, values)
    messages = read_all(pv_settings, topic, 150)
    assert len(messages) == 150
    chunk = Chunk(topic, 0, messages[0].offset(), messages[-1].offset(), messages)
    handler = PageViewHandler(pv_settings)
    assert handler.handle(Batch("g", [chunk])) == []
    months = ch.command("SELECT uniqExact(toYYYYMM(event_date)) FROM page_views_raw")
    assert int(months) == 150
    handler.handle(Batch("g", [chunk]))  # the replay of the same chunk
    assert ch.command("SELECT count() FROM page_views_raw") == 150
    for table in ("page_views_agg_minute", "page_views_agg_hour"):
        rows = ch.query(ROLLUP_SQL.format(table=table)).result_rows
        assert sum(int(r[2]) for r in rows) == 150, table


def test_future_timestamps_are_judged_against_the_kafka_timestamp(
    pv_settings: Settings, topic: str
) -> None:
    """Records that reached Kafka three hours ago (a replay, or a consumer that was down):
    one stamped 30 min after its Kafka time is valid, one stamped 3 h after it (now) is "in
    the future" (more than an hour ahead of when it was sent), whenever it is processed."""
    now = datetime.now(UTC).replace(microsecond=0)
    sent = now - timedelta(hours=3)
    ok, ahead = view("/ok", sent + timedelta(minutes=30)), view("/ahead", now)
    send(pv_settings, topic, [ok, ahead], kafka_ms=int(sent.timestamp() * 1000))
    consumer = pipeline(pv_settings, topic)
    ch = clickhouse_client(pv_settings)
    run_until(
        consumer,
        lambda: (
            consumer.stats.dead_letters >= 1
            and ch.command("SELECT count() FROM page_views_raw") >= 1
        ),
    )
    assert ch.query("SELECT page_id FROM page_views_raw").result_rows == [("/ok",)]
    dead = read_all(pv_settings, dlq_topic(topic), 1)
    assert [m.value() for m in dead] == [ahead]
    assert b"timestamp" in dict(dead[0].headers())["dlq.reason"]
