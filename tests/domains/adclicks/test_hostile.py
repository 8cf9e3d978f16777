"""Property test at the pipeline level: schema-shaped clicks whose text fields come from
:func:`tests.hostile_text.hostile_text`, sent through the real broker to the running
pipeline (chDB, Redis claims). For every record: stored exactly once, or in the DLQ with a
reason, or dropped because its click_id was stored already (re-sends); and a canary sent
after them is stored within seconds, so nothing stalls the pipeline.

The pipeline runs for the whole test, so click_ids drawn by different examples meet: the
check is against everything stored so far, as a model of "the first copy wins" would be.
"""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from clickflow.config import Settings
from clickflow.domains.adclicks.config import AdClicksConfig
from clickflow.domains.adclicks.pipeline import pipeline_spec
from clickflow.kafka.batch import BatchTrigger, Delivery
from clickflow.kafka.config import consumer_config, producer_config
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import dlq_topic
from clickflow.migrations import migrate_clickhouse
from clickflow.pipelines import PipelineOptions, build_consumer
from clickflow.stores.clickhouse import clickhouse_client
from tests.hostile_text import hostile_text

PARTITIONS = 4
CANARY_S = 30.0  # a canary is stored within this (a 2-core machine shared with others)
# Fixed for the session: a strategy that moved with the clock would differ between runs.
T0_MS = int(time.time() * 1000)


def clicks() -> st.SearchStrategy[dict]:
    # Timestamps across the accepted range (2001 .. 5 minutes ahead of the record's Kafka
    # timestamp) and a little beyond it (rejected as "in the future").
    ts = st.integers(1_000_000_000_000, T0_MS + 600_000)
    return st.fixed_dictionaries(
        {
            "click_id": hostile_text(64),
            "ad_id": hostile_text(64),
            "click_timestamp": ts,
            "user_id": hostile_text(128),
            "ip": hostile_text(45),
            "country": st.sampled_from(["US", "DE", "us", "U\x00", "ÜS"]),
        },
        optional={
            "device": st.sampled_from(["mobile", "tv", "other", "phone"]),
            "os": st.sampled_from(["ios", "linux", "beos"]),
        },
    )


def _run(settings: Settings, examples: int) -> None:
    topic = f"adclicks-hostile-{uuid.uuid4().hex[:8]}"
    migrate_clickhouse(settings, ["adclicks"])
    cfg = AdClicksConfig(topic=topic, partitions=PARTITIONS)
    opts = PipelineOptions(BatchTrigger(max_records=500, max_seconds=0.2), Delivery.EXACTLY_ONCE)
    opts.group = f"hostile-{topic}"
    consumer = build_consumer(settings, pipeline_spec(cfg), opts)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    producer = EventProducer(producer_config(settings))
    dlq = Consumer(consumer_config(settings, f"dlq-{topic}"))
    dlq.subscribe([dlq_topic(topic)])
    dead: dict[tuple[int, int], str] = {}  # (partition, offset) -> reason
    ch = clickhouse_client(settings)
    try:

        def send(value: bytes, partition: int) -> tuple[int, int]:
            out: list = []
            producer.send(
                topic,
                value,
                key=b"k",
                partition=partition,
                on_delivery=lambda e, m: out.append((e, m)),
            )
            assert producer.flush(30) == 0
            err, msg = out[0]
            assert err is None, err
            return msg.partition(), msg.offset()

        @hsettings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def property_(data: st.DataObject) -> None:
            now_ms = int(time.time() * 1000)
            records = data.draw(st.lists(clicks(), min_size=1, max_size=12), "clicks")
            parts = data.draw(
                st.lists(
                    st.integers(0, PARTITIONS - 1), min_size=len(records), max_size=len(records)
                )
            )
            resend = data.draw(st.lists(st.integers(0, len(records) - 1), max_size=4), "re-sends")
            sent: list[tuple[bytes, tuple[int, int]]] = []
            for rec, p in zip(records, parts, strict=True):
                value = orjson.dumps(rec)
                sent.append((value, send(value, p)))
            for i in resend:  # the same record again, on another partition
                value = sent[i][0]
                sent.append((value, send(value, (parts[i] + 1) % PARTITIONS)))
            canaries = {p: f"canary-{uuid.uuid4().hex}" for p in range(PARTITIONS)}
            for p, cid in canaries.items():
                send(
                    orjson.dumps(
                        {"click_id": cid, "ad_id": "canary", "click_timestamp": now_ms,
                         "user_id": "u", "ip": "10.0.0.1", "country": "US"}
                    ),
                    p,
                )  # fmt: skip
            deadline = time.monotonic() + CANARY_S
            while True:
                found = ch.query(
                    "SELECT count() FROM ad_clicks_raw WHERE click_id IN {c:Array(String)}",
                    parameters={"c": list(canaries.values())},
                ).result_rows[0][0]
                if found == PARTITIONS:
                    break
                assert time.monotonic() < deadline, "a canary was not stored in time: stalled"
                time.sleep(0.1)
            stored = {
                (int(p), int(o)): cid
                for cid, p, o in ch.query(
                    "SELECT click_id, kafka_partition, kafka_offset FROM ad_clicks_raw"
                ).result_rows
            }
            by_id: dict[str, int] = {}
            for cid in stored.values():
                by_id[cid] = by_id.get(cid, 0) + 1
            assert all(n == 1 for n in by_id.values()), "a click_id stored twice"
            missing = {at for _, at in sent if at not in stored}
            deadline = time.monotonic() + 15
            while True:
                for m in dlq.consume(500, 0.2):
                    if m.error() is None:
                        h = dict(m.headers() or [])
                        at = (int(h["dlq.partition"]), int(h["dlq.offset"]))
                        dead[at] = h["dlq.reason"].decode()
                # A record not stored may be a re-send of a stored click, or a dead letter.
                unexplained = [
                    (v, at)
                    for v, at in sent
                    if at in missing and at not in dead and orjson.loads(v)["click_id"] not in by_id
                ]
                if not unexplained or time.monotonic() > deadline:
                    break
            assert unexplained == [], (
                f"neither stored, nor a re-send, nor dead-lettered: {unexplained[:3]}"
            )
            assert all(dead[at] for at in missing if at in dead), "a dead letter without a reason"
            assert not set(dead) & set(stored), "a record both stored and dead-lettered"
            total = ch.query("SELECT count() FROM ad_clicks_raw").result_rows[0][0]
            summed = ch.query("SELECT sum(clicks) FROM ad_clicks_minute").result_rows[0][0]
            assert total == summed

        property_()
    finally:
        consumer.stop()
        thread.join(30)
        dlq.close()


@pytest.mark.parametrize(
    "examples",
    [pytest.param(12, id="short"), pytest.param(150, id="long", marks=pytest.mark.chaos)],
)
def test_hostile_clicks_are_stored_once_or_dead_lettered_and_never_stall(
    settings: Settings, redis_url: str, examples: int
) -> None:
    _run(settings.model_copy(update={"redis_url": redis_url}), examples)
