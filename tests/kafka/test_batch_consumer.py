"""The consumer framework against the real broker: triggers, retries, DLQ, shutdown."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import orjson
import pytest
from confluent_kafka import Consumer

from clickflow.config import Settings
from clickflow.exactly_once.intent_log import resolve_overlaps
from clickflow.kafka.batch import Batch, BatchTrigger, Chunk, Delivery
from clickflow.kafka.config import consumer_config, producer_config
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.dlq import DeadLetter
from clickflow.kafka.exceptions import Fenced
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics


class MemorySink:
    """A handler writing to a list; can be made to fail like a sink that is down."""

    def __init__(self, fail_times: int = 0, delay: float = 0.0) -> None:
        self.rows: list[int] = []
        self.batches: list[int] = []
        self.fail_times = fail_times
        self.calls = 0
        self.delay = delay
        self.tokens: set[str] = set()
        self.in_handle = threading.Event()

    def handle(self, batch: Batch) -> list[DeadLetter]:
        self.calls += 1
        self.in_handle.set()
        if self.delay:
            time.sleep(self.delay)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise ConnectionError("sink is down")
        letters, good = [], []
        for m in batch.messages():
            try:
                good.append(orjson.loads(m.value())["n"])
            except (orjson.JSONDecodeError, KeyError, TypeError) as e:
                letters.append(DeadLetter(m, f"invalid record: {e}"))
        self.rows.extend(good)
        self.batches.append(len(batch))
        return letters


def produce(settings: Settings, topic: str, values: list[bytes], key_fn=None) -> None:
    p = EventProducer(producer_config(settings))
    for i, v in enumerate(values):
        p.send(topic, v, key=key_fn(i) if key_fn else str(i).encode())
    assert p.flush(15) == 0


def make_consumer(
    settings: Settings, topic: str, handler, trigger: BatchTrigger, group: str | None = None, **kw
) -> BatchConsumer:
    ensure_topics(settings.kafka_bootstrap, [TopicSpec(topic, 4), TopicSpec(dlq_topic(topic), 4)])
    return BatchConsumer(
        name=f"test-{topic}",
        topics=[topic],
        handler=handler,
        consumer_conf=consumer_config(settings, group or f"g-{topic}"),
        dlq_producer=EventProducer(producer_config(settings, **{"linger.ms": 1})),
        trigger=trigger,
        backoff_initial=0.05,
        backoff_max=0.5,
        **kw,
    )


def run_until(consumer: BatchConsumer, cond, timeout: float = 120.0) -> None:
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.stop()
    t.join(timeout=60)
    assert not t.is_alive(), "consumer did not stop"
    assert cond(), "condition not reached before the timeout"


def left_in_group(settings: Settings, topic: str) -> list[int]:
    """What a new consumer of the group ``g-<topic>`` still gets: the uncommitted records."""
    sink = MemorySink()
    again = make_consumer(
        settings, topic, sink, BatchTrigger(max_records=10, max_seconds=0.3), group=f"g-{topic}"
    )
    run_until(again, lambda: again.ready.is_set() and time.sleep(1.5) is None)
    return sink.rows


def records(n: int, start: int = 0) -> list[bytes]:
    return [orjson.dumps({"n": i, "pad": "x" * 50}) for i in range(start, start + n)]


def read_all(settings: Settings, topic: str, expect: int, timeout: float = 20.0) -> list:
    c = Consumer(consumer_config(settings, f"reader-{topic}-{time.time()}"))
    c.subscribe([topic])
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        out += [m for m in c.consume(100, 0.5) if m.error() is None]
    c.close()
    return out


def test_count_trigger_hands_over_full_batches(settings: Settings, topic: str) -> None:
    sink = MemorySink()
    consumer = make_consumer(settings, topic, sink, BatchTrigger(max_records=100, max_seconds=None))
    produce(settings, topic, records(1000))
    run_until(consumer, lambda: len(sink.rows) >= 1000)
    assert sorted(sink.rows) == list(range(1000))
    assert all(n == 100 for n in sink.batches), sink.batches


def test_time_trigger_flushes_a_trickle(settings: Settings, topic: str) -> None:
    sink = MemorySink()
    consumer = make_consumer(settings, topic, sink, BatchTrigger(max_records=None, max_seconds=0.5))
    produce(settings, topic, records(7))
    run_until(consumer, lambda: len(sink.rows) >= 7)
    assert sorted(sink.rows) == list(range(7))


def test_hybrid_trigger_takes_whichever_comes_first(settings: Settings, topic: str) -> None:
    sink = MemorySink()
    consumer = make_consumer(settings, topic, sink, BatchTrigger(max_records=300, max_seconds=0.5))
    produce(settings, topic, records(1000))
    run_until(consumer, lambda: len(sink.rows) >= 1000)
    # Full batches never exceed N; the tail under N is flushed by the timer.
    assert max(sink.batches) <= 300
    assert sorted(sink.rows) == list(range(1000))
    # A trickle under N is still flushed by the timer.
    produce(settings, topic, records(5, start=1000))
    consumer2 = make_consumer(settings, topic, sink, BatchTrigger(max_records=300, max_seconds=0.5))
    run_until(consumer2, lambda: len(sink.rows) >= 1005)
    assert sorted(sink.rows) == list(range(1005))


def test_sparse_trigger_waits_for_more_while_traffic_is_thin(
    settings: Settings, topic: str
) -> None:
    """A trickle (10 records a second, under ``sparse_records`` a second) is cut every
    ``sparse_seconds``, not every ``max_seconds``: each batch costs the store a fixed price."""
    trigger = BatchTrigger(
        max_records=1000, max_seconds=0.3, sparse_records=100, sparse_seconds=2.0
    )
    sink = MemorySink()
    consumer = make_consumer(settings, topic, sink, trigger)
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    try:
        assert consumer.ready.wait(120), "no partitions assigned"
        p = EventProducer(producer_config(settings, **{"linger.ms": 1}))
        for i in range(40):  # 4 s of a trickle
            p.send(topic, records(1, start=i)[0], key=str(i).encode())
            p.flush(5)
            time.sleep(0.1)
        deadline = time.monotonic() + 60
        while len(sink.rows) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        consumer.stop()
        t.join(timeout=60)
    assert sorted(sink.rows) == list(range(40))
    # Every 0.3 s would be ~14 batches; every 2 s is 2 to 4 (a slow machine: fewer).
    assert len(sink.batches) <= 5, sink.batches


def test_sparse_trigger_cuts_a_lone_record_after_a_quiet_spell_at_max_seconds(
    settings: Settings, topic: str
) -> None:
    """A record that comes after ``sparse_seconds`` of nothing is not kept waiting for
    company: it is cut ``max_seconds`` after it came, not at the next sparse deadline."""
    trigger = BatchTrigger(max_records=1000, max_seconds=0.3, sparse_records=100, sparse_seconds=6)
    sink = MemorySink()
    consumer = make_consumer(settings, topic, sink, trigger)
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    try:
        assert consumer.ready.wait(120), "no partitions assigned"
        time.sleep(6.5)  # a quiet spell longer than sparse_seconds
        sent = time.monotonic()
        produce(settings, topic, records(1))
        while not sink.rows and time.monotonic() - sent < 30:
            time.sleep(0.02)
        took = time.monotonic() - sent
    finally:
        consumer.stop()
        t.join(timeout=60)
    assert sink.rows == [0]
    assert took < 3.0, f"a lone record waited {took:.1f} s"


def test_an_idle_consumer_sleeps_through_its_batch_timer(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holding nothing, the loop wakes every IDLE_WAIT_S (2 s), not at every expiry of a
    0.3 s batch timer; a record that comes is still cut by the timer."""
    from clickflow.kafka import consumer as consumer_module

    calls: list[float] = []

    class CountingConsumer(Consumer):  # type: ignore[misc]
        def consume(self, *args: object, **kwargs: object) -> list:
            calls.append(time.monotonic())
            return super().consume(*args, **kwargs)

    monkeypatch.setattr(consumer_module, "Consumer", CountingConsumer)
    sink = MemorySink()
    consumer = make_consumer(settings, topic, sink, BatchTrigger(max_records=100, max_seconds=0.3))
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    try:
        assert consumer.ready.wait(120), "no partitions assigned"
        time.sleep(1.0)
        start = time.monotonic()
        time.sleep(6.0)
        idle_calls = [c for c in calls if start <= c < start + 6.0]
        produce(settings, topic, records(3))
        deadline = time.monotonic() + 30
        while len(sink.rows) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        consumer.stop()
        t.join(timeout=60)
    assert sorted(sink.rows) == [0, 1, 2]
    # Waking at every 0.3 s expiry would be ~20 calls in 6 s; every 2 s is 3 or 4.
    assert len(idle_calls) <= 5, len(idle_calls)


def test_a_consumer_holding_records_does_not_spin_before_its_timer(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """consume() takes whole milliseconds: the wait up to the batch timer is rounded up, not
    down to 0 ms for the timer's last fraction of a millisecond (a spin at every batch)."""
    from clickflow.kafka import consumer as consumer_module

    calls: list[float] = []

    class CountingConsumer(Consumer):  # type: ignore[misc]
        def consume(self, *args: object, **kwargs: object) -> list:
            calls.append(time.monotonic())
            return super().consume(*args, **kwargs)

    monkeypatch.setattr(consumer_module, "Consumer", CountingConsumer)
    sink = MemorySink()
    consumer = make_consumer(settings, topic, sink, BatchTrigger(max_records=1000, max_seconds=0.3))
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    try:
        assert consumer.ready.wait(120), "no partitions assigned"
        p = EventProducer(producer_config(settings, **{"linger.ms": 1}))
        start = time.monotonic()
        for i in range(40):  # a record every 0.1 s: never idle for long, a batch every 0.3 s
            p.send(topic, records(1, start=i)[0], key=str(i).encode())
            p.flush(5)
            time.sleep(0.1)
        end = time.monotonic()
        deadline = end + 30
        while len(sink.rows) < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        consumer.stop()
        t.join(timeout=60)
    assert sorted(sink.rows) == list(range(40))
    busy = [c for c in calls if start <= c < end]
    seconds = end - start
    # ~10 waits of 0.1 s a second plus one per batch; a spin adds ~100 per batch.
    assert len(busy) < 40 * seconds, (len(busy), seconds)


def test_sparse_trigger_cuts_a_stream_at_max_seconds(settings: Settings, topic: str) -> None:
    """At ``sparse_records`` or more, a batch is cut by ``max_seconds`` as without the rule."""
    trigger = BatchTrigger(
        max_records=10_000, max_seconds=0.5, sparse_records=100, sparse_seconds=600.0
    )
    sink = MemorySink()
    consumer = make_consumer(settings, topic, sink, trigger)
    produce(settings, topic, records(150))
    run_until(consumer, lambda: len(sink.rows) >= 150, timeout=120)
    assert sorted(sink.rows) == list(range(150))


def test_sparse_trigger_settings() -> None:
    trigger = BatchTrigger(max_records=None, max_seconds=1.0, sparse_records=10, sparse_seconds=3)
    assert trigger.seconds_for(0) == 3 and trigger.seconds_for(9) == 3
    assert trigger.seconds_for(10) == 1.0
    assert BatchTrigger(max_seconds=1.0).seconds_for(0) == 1.0
    with pytest.raises(ValueError):
        BatchTrigger(max_seconds=2.0, sparse_records=10, sparse_seconds=1.0)
    with pytest.raises(ValueError):
        BatchTrigger(max_records=10, max_seconds=None, sparse_records=10, sparse_seconds=1.0)
    with pytest.raises(ValueError):
        BatchTrigger(max_seconds=1.0, sparse_records=0, sparse_seconds=3.0)


def test_handler_failure_then_recovery_loses_and_duplicates_nothing(
    settings: Settings, topic: str
) -> None:
    sink = MemorySink(fail_times=4)
    consumer = make_consumer(settings, topic, sink, BatchTrigger(max_records=250, max_seconds=0.3))
    produce(settings, topic, records(2000))
    run_until(consumer, lambda: len(sink.rows) >= 2000)
    assert consumer.stats.retries == 4
    assert sorted(sink.rows) == list(range(2000))  # each exactly once
    # Offsets were committed after the writes: a new consumer in the group gets nothing.
    assert left_in_group(settings, topic) == []


def test_poison_record_goes_to_dlq_and_does_not_stop_the_partition(
    settings: Settings, topic: str
) -> None:
    values = records(300)
    values[10] = b"{not json"
    values[200] = b'{"no_n": 1}'
    sink = MemorySink()
    consumer = make_consumer(settings, topic, sink, BatchTrigger(max_records=50, max_seconds=0.3))
    produce(settings, topic, values, key_fn=lambda i: b"same-key")  # one partition
    run_until(consumer, lambda: len(sink.rows) >= 298)
    assert sorted(sink.rows) == [i for i in range(300) if i not in (10, 200)]
    dead = read_all(settings, dlq_topic(topic), 2)
    assert sorted(m.value() for m in dead) == sorted([b"{not json", b'{"no_n": 1}'])
    headers = dict(dead[0].headers())
    assert b"invalid record" in headers["dlq.reason"]
    assert headers["dlq.topic"] == topic.encode()
    assert int(headers["dlq.offset"]) in (10, 200)


class MemoryIntentLog:
    """The intent log's contract in memory: epochs, the fence, overlaps resolved the same way
    as :class:`~clickflow.exactly_once.intent_log.ClickHouseIntentLog`."""

    def __init__(self) -> None:
        self.ranges: list[tuple[str, str, int, int, int]] = []
        self.epochs: dict[tuple[str, str, int], int] = {}
        self.epoch_of: dict[tuple[str, str, int, int, int], int] = {}
        self.fail_records = 0

    def claim(self, group, partitions, proposed):
        epoch = max([proposed] + [self.epochs.get((group, t, p), 0) + 1 for t, p in partitions])
        for t, p in partitions:
            self.epochs[(group, t, p)] = epoch
        return epoch

    def record(self, group: str, chunks: list[Chunk]) -> None:
        if self.fail_records > 0:
            self.fail_records -= 1
            raise ConnectionError("intent log is down")
        for c in chunks:
            key = (group, c.topic, c.partition, c.first_offset, c.last_offset)
            self.ranges.append(key)
            self.epoch_of[key] = max(self.epoch_of.get(key, 0), c.epoch)
            tp = (group, c.topic, c.partition)
            self.epochs[tp] = max(self.epochs.get(tp, 0), c.epoch)
        fenced = {
            (c.topic, c.partition)
            for c in chunks
            if self.epochs[(group, c.topic, c.partition)] > c.epoch
        }
        if fenced:
            raise Fenced(fenced)

    def pending(self, group, topic, partition, from_offset):
        return resolve_overlaps(
            [
                (a, b, self.epoch_of[(g, t, p, a, b)])
                for g, t, p, a, b in set(self.ranges)
                if (g, t, p) == (group, topic, partition) and b >= from_offset
            ]
        )

    def forget_committed(self, group, committed) -> None:
        pass


class TokenSink(MemorySink):
    """Idempotent per chunk token, like a ClickHouse insert with a deduplication token."""

    def __init__(self, crash_after_write: int) -> None:
        super().__init__()
        self.crash_after_write = crash_after_write
        self.written: list[int] = []

    def handle(self, batch: Batch) -> list[DeadLetter]:
        for c in batch.chunks:
            tok = c.token(batch.group)
            if tok in self.tokens:
                continue
            self.tokens.add(tok)
            self.written += [orjson.loads(m.value())["n"] for m in c.messages]
        if self.crash_after_write > 0:
            self.crash_after_write -= 1
            if self.crash_after_write == 0:
                raise SystemExit  # simulated crash: written, not committed
        return []


def test_exactly_once_replays_the_same_chunks_after_a_crash(settings: Settings, topic: str) -> None:
    intents = MemoryIntentLog()
    sink = TokenSink(crash_after_write=3)
    consumer = make_consumer(
        settings,
        topic,
        sink,
        BatchTrigger(max_records=70, max_seconds=0.2),
        delivery=Delivery.EXACTLY_ONCE,
        intent_log=intents,
    )
    produce(settings, topic, records(1000))
    t = threading.Thread(target=lambda: pytest.raises(SystemExit, consumer.run), daemon=True)
    t.start()
    t.join(30)
    assert len(sink.written) > 0
    # Restart with a different batch size: recorded chunks are still replayed as they were.
    sink.crash_after_write = 0
    again = make_consumer(
        settings,
        topic,
        sink,
        BatchTrigger(max_records=333, max_seconds=0.2),
        group=f"g-{topic}",
        delivery=Delivery.EXACTLY_ONCE,
        intent_log=intents,
    )
    run_until(again, lambda: len(sink.written) >= 1000)
    assert sorted(sink.written) == list(range(1000))


class PipelinedSink(MemorySink):
    """A PipelinedBatchHandler: writes on its own thread while the next batch is read.

    Writes are idempotent per chunk token (as the framework requires of pipelined handlers)
    and checked to come after the batch's intent was recorded."""

    def __init__(self, intents: MemoryIntentLog | None = None, **kw) -> None:
        super().__init__(**kw)
        self.writer = ThreadPoolExecutor(1)
        self.intents = intents
        self.unrecorded_writes = 0
        self.max_pending = 0
        self._pending = 0

    def submit(self, batch: Batch, before_write) -> Future[list[DeadLetter]]:
        self._pending += 1
        self.max_pending = max(self.max_pending, self._pending)
        self.writer.submit(before_write, batch)
        return self.writer.submit(self._write, batch)

    def _write(self, batch: Batch) -> list[DeadLetter]:
        try:
            return self.handle(batch)
        finally:
            self._pending -= 1

    def handle(self, batch: Batch) -> list[DeadLetter]:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.intents is not None:
            recorded = {(p, a, b) for _g, _t, p, a, b in self.intents.ranges}
            self.unrecorded_writes += sum(
                (c.partition, c.first_offset, c.last_offset) not in recorded for c in batch.chunks
            )
        if self.fail_times > 0:
            self.fail_times -= 1
            raise ConnectionError("sink is down")
        letters: list[DeadLetter] = []
        for c in batch.chunks:
            tok = c.token(batch.group)
            if tok not in self.tokens:
                self.tokens.add(tok)
                self.rows += [orjson.loads(m.value())["n"] for m in c.messages]
        self.batches.append(len(batch))
        return letters


def test_pipelined_handler_overlaps_batches_retries_failures_and_commits_everything(
    settings: Settings, topic: str
) -> None:
    intents = MemoryIntentLog()
    sink = PipelinedSink(intents, fail_times=3, delay=0.02)
    consumer = make_consumer(
        settings,
        topic,
        sink,
        BatchTrigger(max_records=100, max_seconds=0.3),
        delivery=Delivery.EXACTLY_ONCE,
        intent_log=intents,
    )
    produce(settings, topic, records(3000))
    run_until(consumer, lambda: len(sink.rows) >= 3000)
    assert sorted(sink.rows) == list(range(3000))  # each exactly once
    assert consumer.stats.retries >= 3
    assert sink.max_pending == 2  # one batch written while the next was submitted
    assert sink.unrecorded_writes == 0  # the intent always came first
    # Every batch was committed after its write: the group has nothing left.
    assert left_in_group(settings, topic) == []


@pytest.mark.parametrize(
    ("sink_class", "n", "batch", "calls"),
    [(MemorySink, 100, 100, 2), (PipelinedSink, 300, 50, 3)],
)
def test_shutdown_while_the_sink_is_down_redelivers_the_batches_after_restart(
    settings: Settings, topic: str, sink_class: type, n: int, batch: int, calls: int
) -> None:
    # The sink is down when shutdown comes: the batches are abandoned uncommitted...
    sink = sink_class(fail_times=10**6)
    trigger = BatchTrigger(max_records=batch, max_seconds=0.3)
    consumer = make_consumer(settings, topic, sink, trigger)
    produce(settings, topic, records(n))
    run_until(consumer, lambda: sink.calls >= calls)
    assert sink.rows == []
    # ...and a restarted consumer of the same group gets them again, whole.
    sink2 = MemorySink()
    again = make_consumer(
        settings, topic, sink2, BatchTrigger(max_records=100, max_seconds=0.3), group=f"g-{topic}"
    )
    run_until(again, lambda: len(sink2.rows) >= n)
    assert sorted(sink2.rows) == list(range(n))


class SynchronousSink(PipelinedSink):
    """The same sink without ``submit``: the framework's plain, synchronous path."""

    submit = None  # type: ignore[assignment]


@pytest.mark.parametrize("sink_class", [PipelinedSink, SynchronousSink])
def test_exactly_once_through_a_rebalance_while_the_sink_fails(
    settings: Settings, topic: str, sink_class: type[PipelinedSink]
) -> None:
    """A second consumer joins while the first retries a failed batch (pipelined: with
    another in flight): every record still lands exactly once (shared intent log, per-chunk
    tokens), and the partitions paused for the outage are read again after the rebalance
    (librdkafka keeps a pause across revoke and assign)."""
    intents = MemoryIntentLog()
    first = sink_class(intents, fail_times=6, delay=0.05)
    second = sink_class(intents, delay=0.02)
    second.rows, second.tokens = first.rows, first.tokens  # one store, as in ClickHouse
    trigger = BatchTrigger(max_records=100, max_seconds=0.2)
    consumers = [
        make_consumer(
            settings, topic, sink, trigger, delivery=Delivery.EXACTLY_ONCE, intent_log=intents
        )
        for sink in (first, second)
    ]
    produce(settings, topic, records(4000))
    threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
    threads[0].start()
    consumers[0].ready.wait(30)
    while first.calls < 2:  # the first failures are being retried
        time.sleep(0.01)
    threads[1].start()  # the group rebalances
    deadline = time.monotonic() + 180  # generous: a busy machine
    while len(set(first.rows)) < 4000 and time.monotonic() < deadline:
        time.sleep(0.1)
    for c in consumers:
        c.stop()
    for t in threads:
        t.join(20)
    assert sorted(first.rows) == list(range(4000))
    assert first.unrecorded_writes == second.unrecorded_writes == 0
