"""Page views through the real broker into chDB, compared with the generator's ground truth."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from clickflow.config import Settings
from clickflow.domains.pageviews.pipeline import PIPELINES
from clickflow.kafka.batch import BatchTrigger
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.topics import TopicSpec
from clickflow.migrations import migrate_clickhouse
from clickflow.pipelines import PipelineOptions, build_consumers
from clickflow.stores.clickhouse import clickhouse_client

from .support import (
    ROLLUP_SQL,
    as_comparable,
    consumer_for,
    expected_rollups,
    generate,
    rows_to_comparable,
)


def run_until_stored(
    consumer: BatchConsumer, settings: Settings, expected: int, timeout: float = 180
) -> None:
    ch = clickhouse_client(settings)
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if ch.command("SELECT count() FROM page_views_raw") >= expected:
                time.sleep(0.5)  # anything extra (a duplicate) would show up now
                break
            time.sleep(0.2)
    finally:
        consumer.stop()
        t.join(20)


def assert_matches_truth(settings: Settings, truth: Path) -> None:
    minute, hour, valid, broken = expected_rollups(truth)
    ch = clickhouse_client(settings)
    assert ch.command("SELECT count() FROM page_views_raw") == valid
    assert ch.command("SELECT uniqExact(event_id) FROM page_views_raw") == valid
    got_minute = rows_to_comparable(
        ch.query(ROLLUP_SQL.format(table="page_views_agg_minute")).result_rows
    )
    got_hour = rows_to_comparable(
        ch.query(ROLLUP_SQL.format(table="page_views_agg_hour")).result_rows
    )
    assert got_minute == as_comparable(minute)
    assert got_hour == as_comparable(hour)
    assert ch.command("SELECT count() FROM processing_errors") == broken


def test_rollups_match_ground_truth_with_the_seed_mix(
    settings_full: Settings, topic: str, tmp_path: Path
) -> None:
    settings = settings_full
    migrate_clickhouse(settings, ["pageviews"])
    truth = tmp_path / "truth.jsonl"
    engine = generate(settings, topic, 20_000, truth, partitioner="round-robin")
    assert engine.stats.broken > 0 and engine.stats.duplicates > 0
    _, _, valid, broken = expected_rollups(truth)
    consumer = consumer_for(settings, topic, BatchTrigger(max_records=2000, max_seconds=0.5))
    run_until_stored(consumer, settings, valid)
    assert_matches_truth(settings, truth)
    assert consumer.stats.dead_letters == broken
    # Hourly bounce rate and average are exact: recomputed from raw rows.
    ch = clickhouse_client(settings)
    raw = ch.query(
        "SELECT page_id, count(), avg(duration_ms), uniqExact(user_id), avg(is_bounce) "
        "FROM page_views_raw GROUP BY page_id ORDER BY page_id"
    ).result_rows
    api = ch.query(
        "SELECT page_id, sumMerge(view_count) v, sumMerge(total_duration) / v, "
        "uniqExactMerge(unique_users), sumMerge(bounce_count) / v "
        "FROM page_views_agg_hour GROUP BY page_id ORDER BY page_id"
    ).result_rows
    assert [(r[0], r[1], round(r[2], 6), r[3], round(r[4], 6)) for r in raw] == [
        (r[0], r[1], round(r[2], 6), r[3], round(r[4], 6)) for r in api
    ]


def test_clickhouse_outage_loses_nothing(
    settings_full: Settings, topic: str, tmp_path: Path
) -> None:
    settings = settings_full
    migrate_clickhouse(settings, ["pageviews"])
    truth = tmp_path / "truth.jsonl"
    generate(settings, topic, 5_000, truth)
    _, _, valid, _ = expected_rollups(truth)
    ch = clickhouse_client(settings)
    ch.command("DETACH TABLE page_views_raw")  # the store is down: inserts fail
    consumer = consumer_for(settings, topic, BatchTrigger(max_records=1000, max_seconds=0.3))
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 120  # generous: a busy machine
    while consumer.stats.retries < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert consumer.stats.retries >= 3
    assert consumer.stats.commits == 0  # nothing committed while the sink is down
    ch.command("ATTACH TABLE page_views_raw")
    deadline = time.monotonic() + 180  # generous: a busy machine
    while ch.command("SELECT count() FROM page_views_raw") < valid:
        assert time.monotonic() < deadline, "records were lost"
        time.sleep(0.2)
    time.sleep(0.5)
    consumer.stop()
    t.join(20)
    assert_matches_truth(settings, truth)


def test_two_consumers_of_the_pipeline_share_its_writer_threads(
    settings_full: Settings, topic: str, tmp_path: Path
) -> None:
    """`--consumers 2` in one process: both handlers write on the same claim, insert and
    intent threads (as one consumer would), and the rollups still match the truth."""
    settings = settings_full
    migrate_clickhouse(settings, ["pageviews"])
    truth = tmp_path / "truth.jsonl"
    generate(settings, topic, 20_000, truth, partitioner="round-robin")
    _, _, valid, _ = expected_rollups(truth)
    spec = dataclasses.replace(PIPELINES[0], topics=[TopicSpec(topic, 4)])
    options = PipelineOptions(BatchTrigger(max_records=2000, max_seconds=0.5), group=f"g-{topic}")
    consumers = build_consumers(settings, spec, options, 2)
    handlers = [c.handler for c in consumers]
    assert handlers[0] is not handlers[1]
    for writer in ("_claimer", "_inserter", "_recorder"):
        assert getattr(handlers[0], writer) is getattr(handlers[1], writer), writer
    threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
    for t in threads:
        t.start()
    ch = clickhouse_client(settings)
    deadline = time.monotonic() + 180
    try:
        while ch.command("SELECT count() FROM page_views_raw") < valid:
            assert time.monotonic() < deadline, "the two consumers did not store every view"
            for t in threads:
                assert t.is_alive()
            time.sleep(0.2)
        time.sleep(0.5)  # anything extra (a duplicate) would show up now
    finally:
        for c in consumers:
            c.stop()
        for t in threads:
            t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert_matches_truth(settings, truth)
