"""Ad-click guarantees that depend on time and on distance, against real chDB and Redis:
exact deduplication far beyond any in-memory window and across a restart, a watermark that
never passes the clock, and a "too far in the future" verdict that is the same on replay.

Batches are built from records with chosen Kafka coordinates and timestamps (what the
consumer framework hands a handler), so distances of 100,000+ records and clocks hours
apart cost seconds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
from confluent_kafka import Message
from prometheus_client import REGISTRY

from clickflow.config import Settings
from clickflow.domains.adclicks import pipeline
from clickflow.domains.adclicks.config import AdClicksConfig
from clickflow.domains.adclicks.pipeline import AdClicksHandler
from clickflow.domains.adclicks.reconcile import reconcile
from clickflow.domains.adclicks.watermark import MINUTE_MS, load_partition_maxima, read_finality
from clickflow.kafka.batch import Batch, Chunk
from clickflow.migrations import migrate_clickhouse
from clickflow.stores.clickhouse import clickhouse_client


@pytest.fixture
def ad_settings(settings: Settings, redis_url: str) -> Iterator[Settings]:
    s = settings.model_copy(update={"redis_url": redis_url})
    migrate_clickhouse(s, ["adclicks"])
    yield s


def click(cid: str, ts_ms: int, ad: str = "ad-1") -> bytes:
    return orjson.dumps(
        {
            "click_id": cid,
            "ad_id": ad,
            "click_timestamp": ts_ms,
            "user_id": "u-1",
            "ip": "10.0.0.1",
            "country": "US",
        }
    )


class Feed:
    """Records of one topic with consecutive offsets per partition."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.next: dict[int, int] = {}

    def batch(self, partition: int, values: list[bytes], kafka_ms: int, group: str = "g") -> Batch:
        first = self.next.get(partition, 0)
        msgs = [
            Message(
                topic=self.topic,
                partition=partition,
                offset=first + i,
                key=b"k",
                value=v,
                timestamp=(1, kafka_ms),
            )
            for i, v in enumerate(values)
        ]
        self.next[partition] = first + len(values)
        return Batch(group, [Chunk(self.topic, partition, first, first + len(values) - 1, msgs)])


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def raw_count(settings: Settings) -> int:
    return clickhouse_client(settings).query("SELECT count() FROM ad_clicks_raw").result_rows[0][0]


def minute_sum(settings: Settings) -> int:
    rows = clickhouse_client(settings).query("SELECT sum(clicks) FROM ad_clicks_minute")
    return int(rows.result_rows[0][0])


def test_copies_further_apart_than_100000_records_and_across_a_restart_count_once(
    ad_settings: Settings,
) -> None:
    topic = f"adclicks-{uuid.uuid4().hex[:8]}"
    cfg = AdClicksConfig(topic=topic, partitions=1)
    feed = Feed(topic)
    now = int(time.time() * 1000)
    early = [f"early-{i}" for i in range(500)]
    handler = AdClicksHandler(ad_settings, cfg)
    assert handler.handle(feed.batch(0, [click(c, now - 60_000) for c in early], now)) == []
    filler = 0
    while filler < 101_000:  # more than the old in-memory window of 100,000 records
        values = [click(f"fill-{filler + i}", now - 30_000) for i in range(20_000)]
        handler.handle(feed.batch(0, values, now))
        filler += len(values)
    # Copies of the first clicks, 101,500 records later, in the same process...
    handler.handle(feed.batch(0, [click(c, now - 60_000) for c in early[:250]], now + 1000))
    # ...and after a restart (a new handler: a new process, nothing in memory).
    restarted = AdClicksHandler(ad_settings, cfg)
    restarted.handle(feed.batch(0, [click(c, now - 60_000) for c in early], now + 2000))
    unique = len(early) + filler
    assert raw_count(ad_settings) == unique
    assert minute_sum(ad_settings) == unique


def test_copies_on_other_partitions_and_by_another_consumer_count_once(
    ad_settings: Settings,
) -> None:
    topic = f"adclicks-{uuid.uuid4().hex[:8]}"
    cfg = AdClicksConfig(topic=topic, partitions=4)
    feed = Feed(topic)
    now = int(time.time() * 1000)
    a, b = AdClicksHandler(ad_settings, cfg), AdClicksHandler(ad_settings, cfg)
    ids = [f"c-{i}" for i in range(300)]
    a.handle(feed.batch(0, [click(c, now - 5000) for c in ids], now))
    # Another consumer of the group, another partition (a round-robin partitioner), a copy
    # 23 hours later (within the 24 h window): all duplicates.
    b.handle(feed.batch(1, [click(c, now - 5000) for c in ids[::2]], now + 23 * 3600_000))
    b.handle(feed.batch(2, [click(c, now - 5000) for c in ids[1::2]], now + 60_000))
    assert raw_count(ad_settings) == minute_sum(ad_settings) == len(ids)


def test_a_replayed_chunk_is_written_once_and_an_unwritten_claimed_one_is_not_lost(
    ad_settings: Settings,
) -> None:
    topic = f"adclicks-{uuid.uuid4().hex[:8]}"
    cfg = AdClicksConfig(topic=topic, partitions=1)
    feed = Feed(topic)
    now = int(time.time() * 1000)
    first = feed.batch(0, [click(f"r-{i}", now - 5000) for i in range(200)], now)
    h = AdClicksHandler(ad_settings, cfg)
    h.handle(first)
    AdClicksHandler(ad_settings, cfg).handle(first)  # replayed after a crash: same chunk
    assert raw_count(ad_settings) == minute_sum(ad_settings) == 200
    # A crash between the claims and the insert: the claims exist, the rows do not.
    second = feed.batch(0, [click(f"s-{i}", now - 5000) for i in range(100)], now)
    crashed = AdClicksHandler(ad_settings, cfg)
    crashed._claim([[(m, _decoded(m)) for m in second.chunks[0].messages]])
    AdClicksHandler(ad_settings, cfg).handle(second)
    assert raw_count(ad_settings) == minute_sum(ad_settings) == 300


def _decoded(m: Message):
    from clickflow.domains.adclicks.events import decode_click

    return decode_click(m.value(), None, 0)


def test_future_stamped_clicks_on_every_partition_never_make_final_pass_the_clock(
    ad_settings: Settings,
) -> None:
    topic = f"adclicks-{uuid.uuid4().hex[:8]}"
    cfg = AdClicksConfig(topic=topic, partitions=4, allowed_lateness_s=15)
    feed = Feed(topic)
    h = AdClicksHandler(ad_settings, cfg)
    late_before = metric("clickflow_adclicks_late_events_total")
    for round_ in range(3):
        now = int(time.time() * 1000)
        for p in range(4):
            # Four minutes ahead (accepted: within max_future_s), then on-time clicks.
            values = [click(f"f-{round_}-{p}", now + 240_000)]
            values += [click(f"o-{round_}-{p}-{i}", now - 2000 + i) for i in range(50)]
            assert h.handle(feed.batch(p, values, now)) == []
        ceiling = int(time.time() * 1000) - 15_000
        fin = read_finality(clickhouse_client(ad_settings), topic, 4)
        assert fin.watermark_ms is not None and fin.watermark_ms <= ceiling
        assert fin.final_through_ms is not None
        assert fin.final_through_ms + MINUTE_MS <= ceiling
    # The on-time clicks after a future one were not late.
    assert metric("clickflow_adclicks_late_events_total") == late_before


def test_too_far_in_the_future_is_judged_by_the_kafka_timestamp_the_same_on_replay(
    ad_settings: Settings,
) -> None:
    topic = f"adclicks-{uuid.uuid4().hex[:8]}"
    cfg = AdClicksConfig(topic=topic, partitions=1, max_future_s=300)
    now = int(time.time() * 1000)
    kafka_ms = now - 3600_000  # the record reached Kafka an hour ago
    values = [
        click("ten-min-ahead", kafka_ms + 600_000),  # ahead of Kafka time: rejected
        click("one-min-ahead", kafka_ms + 60_000),  # within max_future_s: accepted
    ]
    verdicts = []
    for clock_s in (now / 1000, now / 1000 + 6 * 3600, kafka_ms / 1000):
        h = AdClicksHandler(ad_settings, cfg)
        h.clock = lambda c=clock_s: c  # processing an hour later, six hours later, at once
        batch = Feed(topic).batch(0, values, kafka_ms, group=f"g-{clock_s}")
        letters = h.handle(batch)
        verdicts.append([(dl.message.value(), dl.reason) for dl in letters])
    assert verdicts[0] == verdicts[1] == verdicts[2]
    assert [v for v, _ in verdicts[0]] == [values[0]]
    assert "ahead of the record's Kafka timestamp" in verdicts[0][0][1]
    assert raw_count(ad_settings) == 1


def test_backfill_beside_an_insert_in_flight_stores_no_wrong_correction(
    ad_settings: Settings,
) -> None:
    topic = f"adclicks-{uuid.uuid4().hex[:8]}"
    cfg = AdClicksConfig(topic=topic, partitions=1)
    feed = Feed(topic)
    minute = (int(time.time() * 1000) // MINUTE_MS - 5) * MINUTE_MS
    h = AdClicksHandler(ad_settings, cfg)
    h.handle(feed.batch(0, [click(f"a-{i}", minute + i) for i in range(100)], minute + 1000))
    committed = {0: 100}  # the framework committed the batch after both parts were written
    ch = clickhouse_client(ad_settings)
    # An insert in flight: its raw part is visible (offsets 100..149, not committed), the
    # view's part in the minute aggregate is not yet. ATTACH PARTITION ... FROM adds parts
    # without running the view: exactly that state.
    ch.command("CREATE TABLE in_flight AS ad_clicks_raw")
    ch.insert(
        "in_flight",
        [
            [f"b-{i}", "ad-1", minute + i, "u-1", "10.0.0.1", "US", "other", "other", 0, 100 + i]
            + [minute, 1]
            for i in range(50)
        ],
        column_names=[
            "click_id", "ad_id", "click_timestamp", "user_id", "ip", "country", "device", "os",
            "kafka_partition", "kafka_offset", "ingest_ms", "chunk_hash",
        ],
    )  # fmt: skip
    day = time.strftime("%Y%m%d", time.gmtime(minute / 1000))
    ch.command(f"ALTER TABLE ad_clicks_raw ATTACH PARTITION ID '{day}' FROM in_flight")
    assert raw_count(ad_settings) == 150 and minute_sum(ad_settings) == 100

    start = datetime.fromtimestamp(minute / 1000 - 600, UTC)
    end = datetime.fromtimestamp(minute / 1000 + 600, UTC)
    result = reconcile(ch, start, end, apply=True, committed=lambda: dict(committed))
    assert result.differences == [] and result.unstable == 1
    # The insert finishes: the view's part lands, the framework commits.
    ch.insert(
        "ad_clicks_minute",
        [[datetime.fromtimestamp(minute / 1000, UTC), "ad-1", "US", "other", "other", 50]],
        column_names=["minute", "ad_id", "country", "device", "os", "clicks"],
    )
    committed[0] = 150
    assert minute_sum(ad_settings) == raw_count(ad_settings) == 150  # no wrong correction
    again = reconcile(ch, start, end, apply=True, committed=lambda: dict(committed))
    assert again.differences == [] and again.unstable == 0


def test_after_a_failed_write_later_batches_hold_their_watermarks_back(
    ad_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pipelined: batch 1's insert fails while batch 2, already submitted, is written. Its
    watermark must wait until every earlier batch is written (the framework retries batch
    1 first, and submits batch 4 only once batch 2 is complete)."""
    topic = f"adclicks-{uuid.uuid4().hex[:8]}"
    cfg = AdClicksConfig(topic=topic, partitions=1)
    feed = Feed(topic)
    now = int(time.time() * 1000)
    batches = [
        feed.batch(0, [click(f"w{k}-{i}", now - 600_000 + k * 120_000) for i in range(50)], now)
        for k in range(4)
    ]
    real = pipeline.insert_chunk
    calls: list[int] = []

    def down_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("ClickHouse is down")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "insert_chunk", down_once)
    ch = clickhouse_client(ad_settings)
    h = AdClicksHandler(ad_settings, cfg)
    first, second = h.submit(batches[0], _no_intent), h.submit(batches[1], _no_intent)
    with pytest.raises(ConnectionError):
        first.result()
    assert second.result() == []
    assert load_partition_maxima(ch, topic) == {}  # batch 1 unwritten: nothing saved
    assert h.handle(batches[0]) == []  # the framework's retry
    assert h.submit(batches[2], _no_intent).result() == []
    assert load_partition_maxima(ch, topic) == {}
    assert h.submit(batches[3], _no_intent).result() == []
    assert load_partition_maxima(ch, topic) == {0: now - 600_000 + 3 * 120_000}
    assert raw_count(ad_settings) == minute_sum(ad_settings) == 200


def _no_intent(_batch: Batch) -> None:
    pass
