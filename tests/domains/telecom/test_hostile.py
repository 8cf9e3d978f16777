"""Property test at the pipeline level: schema-shaped telecom events whose text fields (ids,
``meta`` keys and values) come from :func:`tests.hostile_text.hostile_text`, through the
real broker to both running consumer groups and PostgreSQL. For every record: its
(source_id, event_id) stored exactly once (raw rows and aggregates), or the record in the
DLQ with a reason; re-sends change nothing; a canary per partition sent after them is
stored within seconds, so no record stalls either group.

Both groups run for the whole test, so ids drawn by different examples meet: the check is
against everything stored so far ("the first copy wins")."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from clickflow.config import Settings
from clickflow.domains.telecom.pipeline import PIPELINES
from clickflow.kafka.batch import BatchTrigger, Delivery
from clickflow.kafka.config import consumer_config, producer_config
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from clickflow.pipelines import PipelineOptions, build_consumer
from tests.hostile_text import hostile_text

from .conftest import pg

PARTITIONS = 8
CANARY_S = 30.0  # a 2-core machine shared with other work
SPECS = {s.name: s for s in PIPELINES}

meta_values = st.recursive(
    st.one_of(
        hostile_text(32),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(hostile_text(16), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def events(draw: st.DrawFn) -> dict:
    start = draw(st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31), timezones=st.just(UTC)))
    kind = draw(st.sampled_from(["CALL_OUT", "CALL_IN", "SMS_SENT", "DATA", "FAX"]))
    span = draw(st.integers(0, 3600))
    duration = 0 if kind == "SMS_SENT" else draw(st.integers(0, span + 5))
    data = kind == "DATA"
    return {
        "event_id": draw(hostile_text(64)),
        "source_id": draw(hostile_text(64)),
        "user_id": draw(hostile_text(64)),
        "type": kind,
        "started_at": start.isoformat().replace("+00:00", "Z"),
        "ended_at": (start + timedelta(seconds=span)).isoformat().replace("+00:00", "Z"),
        "duration_sec": duration,
        "bytes_up": draw(st.integers(0, 2**40)) if data else 0,
        "bytes_down": draw(st.integers(0, 2**40)) if data else 0,
        "meta": draw(st.dictionaries(hostile_text(16), meta_values, max_size=4)),
    }


def _dumps(event: dict) -> bytes:
    import json

    return json.dumps(event).encode()  # json, not orjson: integers beyond 64 bits are JSON


def _run(settings: Settings, examples: int) -> None:
    topic = f"telecom-hostile-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, PARTITIONS)])
    opts = PipelineOptions(BatchTrigger(max_records=500, max_seconds=0.2), Delivery.AT_LEAST_ONCE)
    consumers = []
    for name in ("telecom-ingest", "telecom-aggregate"):
        o = replace(opts, group=f"{name}-{topic}")
        spec = replace(SPECS[name], topics=[TopicSpec(topic, PARTITIONS)])
        consumers.append(build_consumer(settings, spec, o))
    threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
    for t in threads:
        t.start()
    producer = EventProducer(producer_config(settings))
    dlq = Consumer(consumer_config(settings, f"dlq-{topic}"))
    dlq.subscribe([dlq_topic(topic)])
    dead: dict[tuple[int, int], str] = {}
    conn = pg(settings)

    def send(value: bytes, partition: int) -> tuple[int, int]:
        out: list = []
        producer.send(
            topic, value, key=b"k", partition=partition, on_delivery=lambda e, m: out.append((e, m))
        )
        assert producer.flush(30) == 0
        err, msg = out[0]
        assert err is None, err
        return msg.partition(), msg.offset()

    key_sql = {
        t: f"SELECT source_id, event_id FROM telecom.{t}"  # noqa: S608  # fixed table names
        for t in ("events_raw", "agg_applied", "event_keys")
    }

    def keys(table: str) -> set[tuple[str, str]]:
        rows = conn.execute(key_sql[table]).fetchall()  # type: ignore[arg-type]
        return {(r[0], r[1]) for r in rows}

    try:

        @hsettings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def property_(data: st.DataObject) -> None:
            records = data.draw(st.lists(events(), min_size=1, max_size=10), "events")
            parts = data.draw(
                st.lists(
                    st.integers(0, PARTITIONS - 1), min_size=len(records), max_size=len(records)
                )
            )
            resend = data.draw(st.lists(st.integers(0, len(records) - 1), max_size=4), "re-sends")
            sent = [(rec, send(_dumps(rec), p)) for rec, p in zip(records, parts, strict=True)]
            for i in resend:  # the same record again, same partition (same user)
                sent.append((records[i], send(_dumps(records[i]), parts[i])))
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            canaries = set()
            for p in range(PARTITIONS):
                c = {
                    "event_id": f"canary-{uuid.uuid4().hex}", "source_id": "canary",
                    "user_id": "u", "type": "SMS_SENT", "started_at": now, "ended_at": now,
                    "duration_sec": 0, "bytes_up": 0, "bytes_down": 0,
                }  # fmt: skip
                canaries.add(("canary", c["event_id"]))
                send(_dumps(c), p)
            deadline = time.monotonic() + CANARY_S
            while not (canaries <= keys("events_raw") and canaries <= keys("agg_applied")):
                assert time.monotonic() < deadline, "a canary was not stored in time: stalled"
                time.sleep(0.1)
            raw = keys("events_raw")
            nrows = conn.execute("SELECT count(*) FROM telecom.events_raw").fetchone()
            assert nrows is not None and nrows[0] == len(raw), "an event stored twice"
            assert keys("agg_applied") == raw == keys("event_keys")
            counted = conn.execute("SELECT sum(events) FROM telecom.agg_global_day").fetchone()
            assert counted is not None and counted[0] == len(raw), "an event counted twice"
            deadline = time.monotonic() + 15
            while True:
                for m in dlq.consume(500, 0.2):
                    if m.error() is None:
                        h = dict(m.headers() or [])
                        dead[(int(h["dlq.partition"]), int(h["dlq.offset"]))] = h[
                            "dlq.reason"
                        ].decode()
                unexplained = [
                    (e, at) for e, at in sent if (e["source_id"], e["event_id"]) not in raw
                    and at not in dead
                ]  # fmt: skip
                if not unexplained or time.monotonic() > deadline:
                    break
            assert unexplained == [], f"neither stored nor dead-lettered: {unexplained[:2]}"
            assert all(dead.values()), "a dead letter without a reason"

        property_()
    finally:
        for c in consumers:
            c.stop()
        for t in threads:
            t.join(30)
        dlq.close()
        conn.close()


@pytest.mark.parametrize(
    "examples",
    [pytest.param(12, id="short"), pytest.param(150, id="long", marks=pytest.mark.chaos)],
)
def test_hostile_events_are_stored_once_or_dead_lettered_and_never_stall(
    tc_settings: Settings, examples: int
) -> None:
    _run(tc_settings, examples)
