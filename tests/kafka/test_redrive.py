"""Dead-letter redrive end to end: the page-view pipeline dead-letters records, its
validation is fixed, `clickflow dlq replay` sends them back: stored once, however often it
runs, and what fails again is counted as back in the DLQ."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from confluent_kafka import Producer

from clickflow.config import Settings
from clickflow.domains.pageviews import events
from clickflow.domains.pageviews.pipeline import PageViewHandler
from clickflow.exactly_once.intent_log import ClickHouseIntentLog
from clickflow.kafka.batch import BatchTrigger, Delivery
from clickflow.kafka.config import consumer_config, producer_config
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.redrive import (
    REDRIVE_HEADER,
    SENDING,
    _Marks,
    parse_since,
    read_dead_letters,
)
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from clickflow.migrations import migrate_clickhouse
from clickflow.stores.clickhouse import clickhouse_client

FUTURE, BAD_IP, GOOD = 6, 3, 5


def _event(i: int, at: datetime, ip: str = "10.0.0.1") -> bytes:
    return orjson.dumps(
        {
            "page_id": f"/p/{i}",
            "user_id": f"u{i}",
            "view_duration_ms": 1000 + i,
            "timestamp": at.isoformat(),
            "is_bounce": False,
            "ip_address": ip,
        }
    )


@pytest.fixture
def pipeline(settings: Settings, redis_url: str, topic: str) -> Iterator[Settings]:
    """The page-view pipeline on ``topic``, in a thread, as `serve` runs it."""
    settings = settings.model_copy(update={"redis_url": redis_url})
    migrate_clickhouse(settings)
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, 2), TopicSpec(dlq_topic(topic), 2)])
    consumer = BatchConsumer(
        name="pageviews",
        topics=[topic],
        handler=PageViewHandler(settings),
        consumer_conf=consumer_config(settings, "clickflow-pageviews"),
        dlq_producer=EventProducer(producer_config(settings)),
        trigger=BatchTrigger(max_records=100, max_seconds=0.2),
        delivery=Delivery.EXACTLY_ONCE,
        intent_log=ClickHouseIntentLog(settings),
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        yield settings
    finally:
        consumer.stop()
        thread.join(30)


def _stored(settings: Settings) -> int:
    return clickhouse_client(settings).command("SELECT count() FROM page_views_raw")


def _wait(what: str, check, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKFLOW_")}
    env["CLICKFLOW_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env["COLUMNS"] = "200"  # rich lays tables out for a terminal this wide
    out = subprocess.run(
        [sys.executable, "-m", "clickflow", *args], env=env, capture_output=True, timeout=180
    )
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    return out


def _replay(settings: Settings, topic: str, *args: str) -> dict:
    out = _cli(settings, "dlq", "replay", "--topic", topic, "--wait", "90", *args)
    return orjson.loads(out.stdout.splitlines()[-1])


def test_replay_stores_each_dead_letter_once(
    pipeline: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = pipeline
    now = datetime.now(UTC)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(FUTURE):  # a client clock two hours ahead: rejected as "in the future"
        producer.produce(topic, _event(i, now + timedelta(hours=2)), key=f"k{i}".encode())
    for i in range(BAD_IP):  # still invalid after the fix
        producer.produce(topic, _event(100 + i, now, ip="not-an-ip"))
    for i in range(GOOD):
        producer.produce(topic, _event(200 + i, now - timedelta(minutes=i)))
    assert producer.flush(30) == 0
    _wait("the dead letters", lambda: len(read_dead_letters(settings, topic)) == FUTURE + BAD_IP)
    _wait("the good records", lambda: _stored(settings) == GOOD)

    listed = _cli(settings, "dlq", "list", "--topic", topic, "--reason", "FUTURE").stdout.decode()
    assert f"{FUTURE} dead letters" in listed and "in the future" in listed
    shown = _cli(settings, "dlq", "show", "--topic", f"{topic}.dlq", "--reason", "ip_address")
    assert shown.stdout.decode().count('"ip_address":"not-an-ip"}') == BAD_IP  # the bytes

    # The fix: clocks up to three hours ahead are accepted from now on.
    monkeypatch.setattr(events, "MAX_FUTURE_S", 3 * 3600)
    first = _replay(settings, topic, "--reason", "future")
    assert first == {
        "selected": FUTURE,
        "already_replayed": 0,
        "replayed": FUTURE,
        "stored": FUTURE,
        "back_to_dlq": 0,
        "pending": 0,
    }
    assert _stored(settings) == GOOD + FUTURE
    # The same key and bytes went back, with a header naming the dead letter
    tail = [
        orjson.loads(line) for line in _cli(settings, "tail", topic, "-n", "50").stdout.splitlines()
    ]
    replayed = [r for r in tail if REDRIVE_HEADER in r["headers"]]
    assert sorted(r["key"] for r in replayed) == sorted(f"k{i}" for i in range(FUTURE))
    assert all(r["headers"][REDRIVE_HEADER].startswith(f"{topic}.dlq/") for r in replayed)

    # Everything again: the six are skipped; the three bad ones fail again.
    second = _replay(settings, topic)
    assert second == {
        "selected": FUTURE + BAD_IP,
        "already_replayed": FUTURE,
        "replayed": BAD_IP,
        "stored": 0,
        "back_to_dlq": BAD_IP,
        "pending": 0,
    }
    third = _replay(settings, topic, "--reason", "future")
    assert third["replayed"] == 0 and third["already_replayed"] == FUTURE
    time.sleep(1)  # a stray re-insert would have landed by now
    assert _stored(settings) == GOOD + FUTURE


def test_a_replay_that_died_after_sending_is_not_sent_twice(pipeline: Settings, topic: str) -> None:
    """A `sending` marker whose record reached the topic counts as replayed."""
    settings = pipeline
    now = datetime.now(UTC)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(2):
        producer.produce(topic, _event(i, now, ip="bad ip"))
    assert producer.flush(30) == 0
    _wait("the dead letters", lambda: len(read_dead_letters(settings, topic)) == 2)
    letters = read_dead_letters(settings, topic)
    # What a replay killed between sending and marking leaves behind, for the first one:
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(f"{topic}.dlq.redrive", 1)])
    event_producer = EventProducer(producer_config(settings))
    marks = _Marks(event_producer, topic)
    marks.add(letters[0].ref, SENDING)
    marks.flush()
    link = f"{topic}.dlq/{letters[0].ref}".encode()
    event_producer.send_sync(topic, letters[0].value, headers=[(REDRIVE_HEADER, link)])
    # The pipeline dead-letters that copy too: a new dead letter, replayed like any other.
    _wait("the copy's dead letter", lambda: len(read_dead_letters(settings, topic)) == 3)
    report = _replay(settings, topic)
    assert (report["already_replayed"], report["replayed"], report["back_to_dlq"]) == (1, 2, 2)
    again = _replay(settings, topic, "--reason", "ip_address")
    assert (again["selected"], again["already_replayed"], again["replayed"]) == (5, 3, 2)


def test_since_takes_durations_and_times() -> None:
    assert parse_since("2h", now=10_000.0) == (10_000 - 7200) * 1000
    assert parse_since("2026-01-02T03:04:05+00:00") == 1767323045000
    assert parse_since(None) is None
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")
