"""The framework's safety nets against the real broker: a record a healthy store keeps
rejecting is isolated to the DLQ (an outage still pauses and retries), and every buffer has a
memory bound, time-only batching included."""

from __future__ import annotations

import threading

import orjson
import pytest

from clickflow.config import Settings
from clickflow.kafka.batch import Batch, BatchTrigger, Delivery
from clickflow.kafka.dlq import DeadLetter
from clickflow.kafka.topics import dlq_topic

from .test_batch_consumer import (
    MemoryIntentLog,
    MemorySink,
    left_in_group,
    make_consumer,
    produce,
    read_all,
    records,
    run_until,
)

POISON = {137, 1500}


class RejectingStore(MemorySink):
    """A store that refuses any write holding a poison record (as ClickHouse refuses a block
    breaking a constraint), and otherwise writes each chunk token once."""

    def __init__(self, fail_times: int = 0) -> None:
        super().__init__(fail_times=fail_times)
        self.healthy = True

    def handle(self, batch: Batch) -> list[DeadLetter]:
        self.calls += 1
        if self.fail_times > 0:
            self.fail_times -= 1
            raise ConnectionError("store is down")
        values = [orjson.loads(m.value())["n"] for m in batch.messages()]
        bad = POISON.intersection(values)
        if bad:
            raise ValueError(f"Constraint `n_allowed` violated by n = {min(bad)}")
        for c in batch.chunks:
            tok = c.token(batch.group)
            if tok not in self.tokens:
                self.tokens.add(tok)
                self.rows += [orjson.loads(m.value())["n"] for m in c.messages]
        return []

    def health(self) -> bool:
        return self.healthy


@pytest.mark.parametrize("delivery", [Delivery.AT_LEAST_ONCE, Delivery.EXACTLY_ONCE])
def test_a_record_a_healthy_store_rejects_goes_to_the_dlq_and_the_rest_is_written_once(
    settings: Settings, topic: str, delivery: Delivery
) -> None:
    store = RejectingStore()
    consumer = make_consumer(
        settings,
        topic,
        store,
        BatchTrigger(max_records=500, max_seconds=0.3),
        delivery=delivery,
        intent_log=MemoryIntentLog() if delivery is Delivery.EXACTLY_ONCE else None,
        health_check=store.health,
    )
    produce(settings, topic, records(3000))
    run_until(consumer, lambda: len(store.rows) >= 3000 - len(POISON), timeout=60)
    assert sorted(store.rows) == [n for n in range(3000) if n not in POISON]  # once each
    dead = read_all(settings, dlq_topic(topic), len(POISON))
    assert sorted(orjson.loads(m.value())["n"] for m in dead) == sorted(POISON)
    for m in dead:
        reason = dict(m.headers())["dlq.reason"].decode()
        assert "store rejected the record" in reason and "Constraint `n_allowed`" in reason
    assert consumer.stats.dead_letters == len(POISON)
    assert left_in_group(settings, topic) == []  # committed past the poison


def test_an_outage_still_pauses_and_retries_without_dead_letters(
    settings: Settings, topic: str
) -> None:
    """The same failures while the health check fails: an outage, nothing is isolated."""
    store = RejectingStore(fail_times=8)
    store.healthy = False
    consumer = make_consumer(
        settings,
        topic,
        store,
        BatchTrigger(max_records=200, max_seconds=0.3),
        health_check=store.health,
    )
    produce(settings, topic, records(1000, start=2000))
    run_until(consumer, lambda: store.fail_times == 0 and len(store.rows) >= 1000, timeout=60)
    assert sorted(store.rows) == list(range(2000, 3000))
    assert consumer.stats.retries >= 8
    assert consumer.stats.dead_letters == 0


@pytest.mark.parametrize(
    ("cap", "limit"),
    [({"max_buffer_records": 200}, 200), ({"max_buffer_bytes": 4000}, 4000 // 60 + 1)],
    ids=["records", "bytes"],
)
def test_time_only_batching_flushes_when_the_buffer_is_full(
    settings: Settings, topic: str, cap: dict, limit: int
) -> None:
    """A one-minute timer never fires during the test: every batch is handed over by the
    memory bound, and none is bigger than it."""
    sink = MemorySink()
    trigger = BatchTrigger(max_records=None, max_seconds=60.0, **cap)
    consumer = make_consumer(settings, topic, sink, trigger)
    produce(settings, topic, records(2000))  # 61-62 bytes each
    run_until(consumer, lambda: len(sink.rows) >= 1800, timeout=40)
    assert len(sink.batches) >= 1800 // limit
    assert max(sink.batches) <= limit, sink.batches


def test_a_replay_under_time_only_batching_is_bounded_too(settings: Settings, topic: str) -> None:
    """Recorded ranges are cut under the bound, so their replay holds at most as much."""
    from .test_batch_consumer import TokenSink

    intents = MemoryIntentLog()
    sink = TokenSink(crash_after_write=2)
    trigger = BatchTrigger(max_records=None, max_seconds=60.0, max_buffer_records=150)
    first = make_consumer(
        settings, topic, sink, trigger, delivery=Delivery.EXACTLY_ONCE, intent_log=intents
    )
    produce(settings, topic, records(1200))
    t = threading.Thread(target=lambda: pytest.raises(SystemExit, first.run), daemon=True)
    t.start()
    t.join(60)
    assert intents.ranges
    assert max(b - a + 1 for _g, _t, _p, a, b in intents.ranges) <= 150
    sink.crash_after_write = 0
    sizes: list[int] = []
    original = sink.handle

    def handle(batch: Batch) -> list[DeadLetter]:
        sizes.append(len(batch))
        return original(batch)

    sink.handle = handle  # type: ignore[method-assign]
    again = make_consumer(
        settings,
        topic,
        sink,
        trigger,
        group=f"g-{topic}",
        delivery=Delivery.EXACTLY_ONCE,
        intent_log=intents,
    )
    run_until(again, lambda: len(sink.written) >= 1200, timeout=40)
    assert sorted(sink.written) == list(range(1200))
    assert max(sizes) <= 150
