"""Shared helpers of the UGC tests: records, running the pipeline, reading page views back."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
from confluent_kafka import Consumer, TopicPartition

from clickflow.config import Settings
from clickflow.domains.ugc.config import UgcConfig
from clickflow.domains.ugc.pipeline import UgcHandler
from clickflow.exactly_once.intent_log import ClickHouseIntentLog
from clickflow.kafka.batch import Batch, BatchTrigger, Delivery
from clickflow.kafka.config import consumer_config, producer_config
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.dlq import DeadLetter
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from clickflow.stores.clickhouse import clickhouse_client

# Epoch ms: a whole hour a day ago. Relative to now, not a fixed date: the UGC tables keep
# a year (TTL), and a fixed date's rows started expiring on insert a year later.
BASE_TS = (int(time.time()) // 3600 - 24) * 3600 * 1000

PAGE_VIEW_SQL = """
    SELECT user_id, page_view_id, page_type, toUnixTimestamp64Milli(started_at),
           if(ended_at IS NULL, NULL, toUnixTimestamp64Milli(assumeNotNull(ended_at))),
           duration_seconds, paired
    FROM ugc_page_view FINAL ORDER BY user_id, page_view_id, paired
"""

Row = tuple  # (user_id, page_view_id, page_type, start_ms, end_ms | None, duration | None, paired)


def record(kind: str, user: str, data: dict, ts: int, event_id: str | None = None) -> bytes:
    rec = {
        "event": kind,
        "event_id": event_id or uuid.uuid4().hex,
        "user_id": user,
        "timestamp": ts,
        "data": data,
    }
    return orjson.dumps(rec)


def half(kind: str, user: str, pvid: str, ts: int, page: str = "movie", eid: str | None = None):
    return record(f"page_view_{kind}", user, {"page_view_id": pvid, "page_type": page}, ts, eid)


def expected_page_views(values: Iterable[bytes], orphans: bool = True) -> list[Row]:
    """Independent truth: per (user, page view) the first start and the first end in
    stream order (one user = one partition, so stream order = offset order)."""
    starts: dict[tuple[str, str], dict] = {}
    ends: dict[tuple[str, str], dict] = {}
    for v in values:
        try:
            r = orjson.loads(v)
        except orjson.JSONDecodeError:
            continue
        if r.get("event") not in ("page_view_start", "page_view_end"):
            continue
        d = r["data"]
        if not isinstance(d, dict) or not d.get("page_view_id") or not r.get("user_id"):
            continue
        if not 10**12 <= r["timestamp"] <= 10**13:
            continue
        key = (r["user_id"], d["page_view_id"])
        target = starts if r["event"] == "page_view_start" else ends
        target.setdefault(key, {"ts": r["timestamp"], "page": d["page_type"]})
    rows = []
    for key, s in starts.items():
        e = ends.get(key)
        if e is not None:
            dur = max(0, e["ts"] - s["ts"]) / 1000
            rows.append((*key, s["page"], s["ts"], e["ts"], dur, 1))
        elif orphans:
            rows.append((*key, s["page"], s["ts"], None, None, 0))
    return sorted(rows)


def page_views(settings: Settings) -> list[Row]:
    return sorted(tuple(r) for r in clickhouse_client(settings).query(PAGE_VIEW_SQL).result_rows)


def produce(settings: Settings, topic: str, values: list[bytes]) -> dict[int, int]:
    """Send (keyed by user_id, like the collector); returns the last offset per partition."""
    last: dict[int, int] = {}

    def on_delivery(err, msg) -> None:
        assert err is None, err
        last[msg.partition()] = max(last.get(msg.partition(), -1), msg.offset())

    p = EventProducer(producer_config(settings))
    for v in values:
        try:
            key = orjson.loads(v).get("user_id", "") or "x"
        except orjson.JSONDecodeError:
            key = "broken"
        p.send(topic, v, key=str(key).encode(), on_delivery=on_delivery)
    assert p.flush(15) == 0
    return last


def produce_at(settings: Settings, topic: str, records: list[tuple[bytes, int]]) -> dict[int, int]:
    """Send (value, Kafka timestamp in epoch ms) pairs, keyed by user_id like the collector:
    the pipeline's clocks are these timestamps, so a test sets the time its records reached
    Kafka (12 h apart, or an outage of a day) without waiting. Returns the last offsets."""
    last: dict[int, int] = {}

    def on_delivery(err, msg) -> None:
        assert err is None, err
        last[msg.partition()] = max(last.get(msg.partition(), -1), msg.offset())

    p = EventProducer(producer_config(settings))
    for v, ts in records:
        key = str(orjson.loads(v).get("user_id", "") or "x").encode()
        while True:
            try:
                p.raw.produce(topic, value=v, key=key, timestamp=ts, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(15) == 0
    return last


def log_with_times(settings: Settings, topic: str, last: dict[int, int]) -> list[tuple[bytes, int]]:
    """Like :func:`log_order`, with each record's Kafka timestamp."""
    c = Consumer(consumer_config(settings, f"reader-{uuid.uuid4().hex[:8]}"))
    c.assign([TopicPartition(topic, p, 0) for p in last])
    got: dict[int, list[tuple[int, bytes, int]]] = {p: [] for p in last}
    deadline = time.monotonic() + 30
    try:
        while any((got[p][-1][0] if got[p] else -1) < o for p, o in last.items()):
            assert time.monotonic() < deadline, "could not read the topic back"
            for m in c.consume(10000, 0.2):
                if m.error() is None and m.offset() <= last[m.partition()]:
                    got[m.partition()].append((m.offset(), m.value(), m.timestamp()[1]))
    finally:
        c.close()
    return [(v, ts) for p in sorted(got) for _, v, ts in got[p]]


def expected_by_kafka_time(log: list[tuple[bytes, int]], wait_ms: int) -> list[Row]:
    """Independent truth on the Kafka clock: per (user, page view) the first start and the
    first end in log order pair iff they reached Kafka at most ``wait_ms`` apart; otherwise
    the start alone is a page view (``paired = 0``) and the end is dropped."""
    starts: dict[tuple[str, str], tuple[dict, int]] = {}
    ends: dict[tuple[str, str], tuple[dict, int]] = {}
    for v, kts in log:
        r = orjson.loads(v)
        if r.get("event") not in ("page_view_start", "page_view_end"):
            continue
        key = (r["user_id"], r["data"]["page_view_id"])
        target = starts if r["event"] == "page_view_start" else ends
        target.setdefault(key, ({"ts": r["timestamp"], "page": r["data"]["page_type"]}, kts))
    rows = []
    for key, (s, ks) in starts.items():
        e = ends.get(key)
        if e is not None and abs(e[1] - ks) <= wait_ms:
            dur = max(0, e[0]["ts"] - s["ts"]) / 1000
            rows.append((*key, s["page"], s["ts"], e[0]["ts"], dur, 1))
        else:
            rows.append((*key, s["page"], s["ts"], None, None, 0))
    return sorted(rows)


def committed(settings: Settings, topic: str, group: str) -> int:
    c = Consumer(consumer_config(settings, group))
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
    finally:
        c.close()
    return sum(max(0, tp.offset) for tp in tps)


def log_order(settings: Settings, topic: str, last: dict[int, int]) -> list[bytes]:
    """Every record of ``topic`` up to ``last``, partition by partition in offset order: the
    order the pipeline sees (a producer retry may reorder what we sent)."""
    c = Consumer(consumer_config(settings, f"reader-{uuid.uuid4().hex[:8]}"))
    c.assign([TopicPartition(topic, p, 0) for p in last])
    got: dict[int, list[tuple[int, bytes]]] = {p: [] for p in last}
    deadline = time.monotonic() + 120  # generous: a busy machine
    try:
        while any((got[p][-1][0] if got[p] else -1) < o for p, o in last.items()):
            assert time.monotonic() < deadline, "could not read the topic back"
            for m in c.consume(10000, 0.2):
                if m.error() is None and m.offset() <= last[m.partition()]:
                    got[m.partition()].append((m.offset(), m.value()))
    finally:
        c.close()
    return [v for p in sorted(got) for _, v in got[p]]


class Tracking:
    """Wraps the handler and remembers the last offset handled per partition."""

    def __init__(self, inner: UgcHandler) -> None:
        self.inner = inner
        self.seen: dict[int, int] = {}
        self.letters: list[DeadLetter] = []

    def handle(self, batch: Batch) -> list[DeadLetter]:
        letters = self.inner.handle(batch)
        self.letters += letters
        for c in batch.chunks:
            self.seen[c.partition] = max(self.seen.get(c.partition, -1), c.last_offset)
        return letters

    def reached(self, last: dict[int, int]) -> bool:
        return all(self.seen.get(p, -1) >= o for p, o in last.items())


def ugc_config(topic: str, **kw) -> UgcConfig:
    return UgcConfig(topic=topic, redis_prefix=f"ugc{uuid.uuid4().hex[:8]}:", **kw)


def run_pipeline(
    settings: Settings,
    handler: Tracking,
    until: Callable[[], bool],
    trigger: BatchTrigger,
    group: str,
    timeout: float = 120.0,
) -> BatchConsumer:
    topic = handler.inner.config.topic
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)])
    consumer = BatchConsumer(
        name="ugc-test",
        topics=[topic],
        handler=handler,
        consumer_conf=consumer_config(settings, group),
        dlq_producer=EventProducer(producer_config(settings, **{"linger.ms": 1})),
        trigger=trigger,
        delivery=Delivery.EXACTLY_ONCE,
        intent_log=ClickHouseIntentLog(settings),
        backoff_initial=0.02,
        backoff_max=0.1,
    )
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.stop()
    t.join(timeout=60)
    assert not t.is_alive(), "consumer did not stop"
    assert until(), "the pipeline did not get there before the timeout"
    return consumer


@dataclass
class Msg:
    """What the UGC handler reads of a Kafka message; by default it reached Kafka a minute
    after ``BASE_TS``."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes
    _kafka_ts: int = BASE_TS + 60_000

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, self._kafka_ts)  # TIMESTAMP_CREATE_TIME
