"""Both consumer groups against the real broker and PostgreSQL: raw events, dedup, DLQ with
reasons, aggregates equal to the ground truth, and unchanged after a full redelivery; a
consumer SIGKILLed mid-stream and restarted in a subprocess (`clickflow process`)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from confluent_kafka import Consumer

from clickflow.config import Settings
from clickflow.domains.telecom.pipeline import PIPELINES
from clickflow.domains.telecom.traffic import TelecomFactory
from clickflow.kafka.batch import BatchTrigger, Delivery
from clickflow.kafka.config import consumer_config, producer_config
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from clickflow.pipelines import PipelineOptions, build_consumer

from .support import (
    Truth,
    expected_aggregates,
    make_events,
    pg,
    raw_keys,
    read_aggregates,
    with_duplicates,
)

SPECS = {s.name: s for s in PIPELINES}


def produce(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    p = EventProducer(producer_config(settings))
    for key, value in records:
        p.send(topic, value, key=key)
    assert p.flush(30) == 0


def consumer_for(settings: Settings, name: str, topic: str, group: str) -> BatchConsumer:
    spec = replace(SPECS[name], topics=[TopicSpec(topic, 8)])
    opts = PipelineOptions(BatchTrigger(max_records=700, max_seconds=0.3), Delivery.AT_LEAST_ONCE)
    opts.group = group
    return build_consumer(settings, spec, opts)


def count(settings: Settings, sql: str) -> int:
    with pg(settings) as conn:
        row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
    return int(row[0]) if row else 0


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_pipelines_store_dedup_dlq_and_aggregate_exactly(tc_settings: Settings, topic: str) -> None:
    ensure_topics(tc_settings.kafka_bootstrap, [TopicSpec(topic, 8)])
    boundary = datetime(2031, 3, 1, tzinfo=UTC)
    events = make_events(4000, boundary - timedelta(hours=12), timedelta(hours=24), users=40)
    truth = Truth()
    for e in events:
        truth.add(e)
    f = TelecomFactory(users=10)
    rng = random.Random(3)
    broken = [f.broken(rng, time.time(), k) for k in f.breakages for _ in range(3)]
    records = [(e["user_id"].encode(), orjson.dumps(e)) for e in with_duplicates(events, 0.25)]
    for b in broken:
        records.insert(rng.randrange(len(records)), (b.key or b"", b.value))
    produce(tc_settings, topic, records)

    ingest = consumer_for(tc_settings, "telecom-ingest", topic, f"ing-{topic}")
    agg = consumer_for(tc_settings, "telecom-aggregate", topic, f"agg-{topic}")
    threads = [threading.Thread(target=c.run, daemon=True) for c in (ingest, agg)]
    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: ingest.stats.records >= len(records) and agg.stats.records >= len(records),
            120,
            "both groups to consume everything",
        )
        wait_for(lambda: ingest.stats.commits and agg.stats.commits, 60, "commits")
    finally:
        ingest.stop()
        agg.stop()
        for t in threads:
            t.join(20)

    keys = raw_keys(tc_settings)
    assert len(keys) == len(set(keys)) == len(truth.events)
    assert set(keys) == set(truth.events)
    assert read_aggregates(tc_settings) == expected_aggregates(truth)
    assert ingest.stats.dead_letters == len(broken)
    assert agg.stats.dead_letters == 0  # each invalid record is dead-lettered once

    dlq = Consumer(consumer_config(tc_settings, f"dlq-{topic}"))
    dlq.subscribe([dlq_topic(topic)])
    dead: list = []
    deadline = time.monotonic() + 120  # generous: a busy machine
    while len(dead) < len(broken) and time.monotonic() < deadline:
        dead += [m for m in dlq.consume(100, 0.5) if m.error() is None]
    dlq.close()
    assert sorted(m.value() for m in dead) == sorted(b.value for b in broken)
    reasons = [dict(m.headers())["dlq.reason"].decode() for m in dead]
    assert all(r.startswith("invalid telecom event") for r in reasons)
    assert any("ended_at is before started_at" in r for r in reasons)

    # A full redelivery (a new group reads the topic from the start) changes nothing.
    replay = consumer_for(tc_settings, "telecom-aggregate", topic, f"replay-{topic}")
    t = threading.Thread(target=replay.run, daemon=True)
    t.start()
    wait_for(lambda: replay.stats.records >= len(records), 120, "the replay")
    replay.stop()
    t.join(20)
    assert read_aggregates(tc_settings) == expected_aggregates(truth)
    assert count(tc_settings, "SELECT count(*) FROM telecom.agg_applied") == len(truth.events)


def _process(settings: Settings, name: str, topic: str, log) -> subprocess.Popen:
    env = {
        **os.environ,
        "CLICKFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CLICKFLOW_POSTGRES_URL": settings.postgres_url or "",
        "CLICKFLOW_REDIS_URL": settings.redis_url or "",
        "CLICKFLOW_TELECOM_TOPIC": topic,
        "CLICKFLOW_DATA_DIR": str(settings.data_dir / f"sub-{topic}"),
    }
    cmd = [sys.executable, "-m", "clickflow", "process", name, "--records", "250"]
    cmd += ["--seconds", "0.2", "--group", f"{name}-{topic}"]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


# Several `clickflow process` starts, each a minute on a busy machine.
@pytest.mark.timeout(900)
def test_sigkill_mid_stream_loses_and_double_counts_nothing(
    tc_settings: Settings, topic: str, tmp_path
) -> None:
    ensure_topics(tc_settings.kafka_bootstrap, [TopicSpec(topic, 8)])
    events = make_events(12000, datetime(2031, 5, 31, tzinfo=UTC), timedelta(days=2), users=60)
    truth = Truth()
    for e in events:
        truth.add(e)
    produce(
        tc_settings,
        topic,
        [(e["user_id"].encode(), orjson.dumps(e)) for e in with_duplicates(events, 0.1)],
    )
    total = len(truth.events)
    log = open(tmp_path / "process.log", "ab")
    names = ("telecom-ingest", "telecom-aggregate")
    procs = {n: _process(tc_settings, n, topic, log) for n in names}
    try:
        applied = "SELECT count(*) FROM telecom.agg_applied"
        raw = "SELECT count(*) FROM telecom.events_raw"
        wait_for(
            lambda: count(tc_settings, applied) >= 1500 and count(tc_settings, raw) >= 1500,
            180,
            "the first batches",
        )
        for p in procs.values():
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        at_kill = (count(tc_settings, raw), count(tc_settings, applied))
        assert at_kill[0] < total or at_kill[1] < total, "killed too late to test anything"
        procs = {n: _process(tc_settings, n, topic, log) for n in names}
        wait_for(
            lambda: count(tc_settings, applied) >= total and count(tc_settings, raw) >= total,
            240,
            "the restarted consumers to finish",
        )
        time.sleep(1.0)  # let a redelivered tail (if any) be applied before comparing
    except AssertionError as exc:
        log.flush()
        tail = (tmp_path / "process.log").read_text()[-3000:]
        raise AssertionError(f"{exc}\n--- process.log (tail) ---\n{tail}") from None
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
    keys = raw_keys(tc_settings)
    assert len(keys) == len(set(keys)) == total
    assert read_aggregates(tc_settings) == expected_aggregates(truth)
    assert all(p.returncode == 0 for p in procs.values()), (tmp_path / "process.log").read_text()[
        -2000:
    ]
