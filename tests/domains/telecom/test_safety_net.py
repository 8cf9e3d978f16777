"""A record PostgreSQL keeps rejecting while it is healthy does not stall telecom ingest.

The telecom pipelines declare a health check (PostgreSQL answers), so the consumer
framework isolates the rejected record to the DLQ with the store's error and writes the
rest once. Without it the batch was retried for ever and nothing after it was stored."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import orjson

from clickflow.config import Settings
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from tests.kafka.test_batch_consumer import read_all

from .support import make_events, pg, raw_keys
from .test_pipeline import consumer_for, produce, wait_for


def test_a_record_the_store_rejects_goes_to_the_dlq_and_the_rest_is_stored(
    tc_settings: Settings, topic: str
) -> None:
    ensure_topics(
        tc_settings.kafka_bootstrap, [TopicSpec(topic, 8), TopicSpec(dlq_topic(topic), 8)]
    )
    events = make_events(300, datetime.now(UTC) - timedelta(days=1), timedelta(hours=6))
    poison = {**events[0], "event_id": "rejected-by-the-store"}
    with pg(tc_settings) as conn:  # PostgreSQL, healthy, refuses this one record
        conn.execute(
            "ALTER TABLE telecom.events_raw ADD CONSTRAINT no_poison "
            "CHECK (event_id <> 'rejected-by-the-store')"
        )
    records = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
    records.insert(150, (poison["user_id"].encode(), orjson.dumps(poison)))
    produce(tc_settings, topic, records)

    ingest = consumer_for(tc_settings, "telecom-ingest", topic, f"ing-{topic}")
    ingest.backoff_initial, ingest.backoff_max = 0.05, 0.2
    t = threading.Thread(target=ingest.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(raw_keys(tc_settings)) >= len(events), 180, "the good events")
        wait_for(lambda: ingest.stats.dead_letters >= 1, 60, "the dead letter")
    finally:
        ingest.stop()
        t.join(30)
    keys = raw_keys(tc_settings)
    assert sorted(keys) == sorted({(e["source_id"], e["event_id"]) for e in events})
    letters = read_all(tc_settings, dlq_topic(topic), 1, timeout=30)
    assert [orjson.loads(m.value())["event_id"] for m in letters] == ["rejected-by-the-store"]
    reason = dict(letters[0].headers())["dlq.reason"].decode()
    assert "no_poison" in reason
