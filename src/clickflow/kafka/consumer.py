"""The one batching consumer framework every pipeline runs on.

A pipeline supplies a :class:`BatchHandler`; the framework does the rest:

* batch triggers: by count (N records), by time (every X seconds) or hybrid (first wins);
* dead letters returned by the handler go to ``<topic>.dlq`` (acked before the commit);
* a failing handler (its sink is down) is retried with exponential backoff and jitter while
  consumption is paused — nothing is dropped and the loop does not spin;
* offsets are committed manually, only after the handler returned (at-least-once);
* exactly-once mode adds an *intent log*: before the handler runs, the offset range of
  each partition chunk is recorded in the sink's store. After a crash the same ranges are
  replayed as the same chunks, so the handler's deterministic per-chunk dedup tokens
  (``Chunk.token``) make the re-insert a no-op. The Kafka transaction abort of the embedded
  broker does not hide records, so correctness never relies on it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaTopicPartition
from prometheus_client import Counter, Gauge, Histogram

from clickflow.exactly_once.replay import ReplayPlan
from clickflow.hot_loops import FEWER_COLLECTIONS, PROMPT_HANDOFFS
from clickflow.kafka.batch import Batch, BatchHandler, BatchTrigger, Chunk, Delivery, IntentLog
from clickflow.kafka.dlq import DeadLetter, publish_dead_letters, remember_dead_letters
from clickflow.kafka.producer import EventProducer
from clickflow.logs import log_fields

log = logging.getLogger("clickflow.consumer")

RECORDS_IN = Counter("clickflow_consumer_records", "Records consumed", ["pipeline"])
BATCHES = Counter("clickflow_consumer_batches", "Batches handled", ["pipeline"])
DLQ_RECORDS = Counter("clickflow_consumer_dlq_records", "Records sent to the DLQ", ["pipeline"])
RETRIES = Counter("clickflow_consumer_retries", "Handler retries (sink failures)", ["pipeline"])
BATCH_SECONDS = Histogram(
    "clickflow_consumer_batch_seconds",
    "Time to handle and commit one batch",
    ["pipeline"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LAST_OFFSET = Gauge(
    "clickflow_consumer_last_offset", "Last committed offset", ["pipeline", "topic", "partition"]
)
SINK_DOWN = Gauge("clickflow_consumer_sink_down", "1 while the handler is failing", ["pipeline"])
LAG = Gauge(
    "clickflow_consumer_lag",
    "Records behind the partition end at the last commit (broker's cached high watermark; "
    "approximate on tansu, whose high watermark lags after multi-record batches)",
    ["pipeline", "topic", "partition"],
)

TP = tuple[str, int]


@dataclass(slots=True)
class _InFlight:
    """A batch a pipelined handler is still writing (``future`` is None once taken)."""

    batch: Batch
    chunks: list[Chunk]
    future: Future[list[DeadLetter]] | None
    started: float


@dataclass
class ConsumerStats:
    records: int = 0
    batches: int = 0
    dead_letters: int = 0
    retries: int = 0
    commits: int = 0


@dataclass
class BatchConsumer:
    """Consume ``topics`` as group ``group`` and hand batches to ``handler``.

    ``consumer_conf`` is a librdkafka config (see :func:`clickflow.kafka.config.consumer_config`);
    ``dlq_producer`` sends dead letters. Run with :meth:`run` (blocking) and stop with
    :meth:`stop` from any thread or a signal handler.
    """

    name: str
    topics: list[str]
    handler: BatchHandler
    consumer_conf: dict
    dlq_producer: EventProducer
    trigger: BatchTrigger = field(default_factory=BatchTrigger)
    delivery: Delivery = Delivery.AT_LEAST_ONCE
    intent_log: IntentLog | None = None
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    fetch_size: int = 10000
    #: Batches a :class:`PipelinedBatchHandler` may still be writing while the next is read.
    max_in_flight: int = 1
    stats: ConsumerStats = field(default_factory=ConsumerStats)

    def __post_init__(self) -> None:
        if self.delivery is Delivery.EXACTLY_ONCE and self.intent_log is None:
            raise ValueError("exactly-once delivery needs an intent log")
        self._stop = threading.Event()
        self._buffer: list[Message] = []
        self._held: list[Message] = []
        self._replay = ReplayPlan()
        self._revoked: set[TP] = set()
        self._assigned: set[TP] = set()
        self.group = self.consumer_conf["group.id"]
        self.ready = threading.Event()  # set once partitions are assigned
        self._consumer: Consumer | None = None
        self._in_flight: deque[_InFlight] = deque()
        # Set when a batch is given up at shutdown: committing any later batch would commit
        # past its offsets, so nothing is committed after it.
        self._abandoned = False
        # True while the oldest in-flight batch is awaited or retried (a rebalance callback
        # can run inside that wait, from consume() while backing off).
        self._completing = False
        # The partitions paused while the handler is failing (None while it is not).
        self._paused: list[KafkaTopicPartition] | None = None
        self._pipelined = callable(getattr(self.handler, "submit", None))
        #: Last commit, or last loop turn with nothing pending: health's "is it progressing".
        self.progress_at = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> ConsumerStats:
        consumer = Consumer(self.consumer_conf)
        self._consumer = consumer
        consumer.subscribe(
            self.topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        log.info(
            "consumer started",
            extra=log_fields(pipeline=self.name, topics=self.topics, delivery=str(self.delivery)),
        )
        try:
            with FEWER_COLLECTIONS, PROMPT_HANDOFFS:
                self._loop(consumer)
        finally:
            try:
                consumer.close()
            except (KafkaException, RuntimeError):
                pass
            log.info(
                "consumer stopped", extra=log_fields(pipeline=self.name, records=self.stats.records)
            )
        return self.stats

    # -- rebalance ---------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        # Positions restart from the committed offsets: a batch given up during the last
        # revoke is read again, so committing is safe again.
        self._abandoned = False
        # librdkafka keeps a partition's pause across revoke and assign: a partition paused
        # for a sink outage and handed back after a rebalance would never be read again.
        if self._paused is not None:  # the sink is still down: resumed when it is back
            consumer.pause(partitions)
            self._paused.extend(partitions)
        else:
            consumer.resume(partitions)
        self._assigned |= tps
        self._revoked -= tps
        if self.delivery is Delivery.EXACTLY_ONCE and self.intent_log is not None:
            committed = consumer.committed(partitions, timeout=10)
            for tp in committed:
                start = tp.offset if tp.offset >= 0 else 0
                plan = self.intent_log.pending(self.group, tp.topic, tp.partition, start)
                self._replay.set((tp.topic, tp.partition), plan)
                if plan:
                    log.info(
                        "replaying recorded chunks",
                        extra=log_fields(
                            pipeline=self.name,
                            topic=tp.topic,
                            partition=tp.partition,
                            chunks=len(plan),
                        ),
                    )
        self.ready.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        if self._completing:
            # The oldest batch is being retried: nothing after it may be committed first.
            # The later ones are dropped uncommitted; whoever owns the partitions next
            # re-reads them (their writes are idempotent per chunk).
            self._drop_in_flight()
        else:
            # Batches still being written are finished and committed while we own them.
            self._finish_in_flight(consumer, give_up_on_failure=True)
        tps = {(p.topic, p.partition) for p in partitions}
        self._assigned -= tps
        self._revoked |= tps
        for tp in tps:
            self._replay.forget(tp)
        # Uncommitted records of revoked partitions are re-read by their next owner.
        self._buffer = [m for m in self._buffer if (m.topic(), m.partition()) not in tps]
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in tps]

    # -- main loop ---------------------------------------------------------------------------

    def _loop(self, consumer: Consumer) -> None:
        max_records = self.trigger.max_records
        max_seconds = self.trigger.max_seconds
        last_flush = time.monotonic()
        new_since_flush = 0
        while not self._stop.is_set():
            if not (self._buffer or self._held or self._in_flight):
                self.progress_at = time.monotonic()
            timeout = 0.1
            if max_seconds is not None:
                timeout = max(0.0, min(timeout, last_flush + max_seconds - time.monotonic()))
            want = self.fetch_size
            if max_records is not None:
                want = max(1, min(want, max_records - len(self._buffer)))
            msgs = consumer.consume(num_messages=want, timeout=timeout)
            if msgs:
                added = self._accept(msgs)
                new_since_flush += added
            while self._in_flight and self._in_flight[0].future.done():
                self._complete_oldest(consumer)
            now = time.monotonic()
            due = (max_records is not None and len(self._buffer) >= max_records) or (
                max_seconds is not None and now - last_flush >= max_seconds
            )
            if due:
                if new_since_flush or self._held:
                    self._flush(consumer)
                elif self._in_flight:
                    self._finish_in_flight(consumer)
                new_since_flush = 0
                last_flush = time.monotonic()
        # Shutdown: finish what is buffered if the sink takes it; otherwise it stays uncommitted
        # and is re-delivered after restart.
        if self._buffer or self._held:
            self._flush(consumer, give_up_on_failure=True)
        self._finish_in_flight(consumer, give_up_on_failure=True)

    def _accept(self, msgs: list[Message]) -> int:
        good = [m for m in msgs if m.error() is None]
        if len(good) != len(msgs):
            for m in msgs:
                err = m.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    log.warning(
                        "consume error", extra=log_fields(pipeline=self.name, error=str(err))
                    )
        n = len(good)
        if n:
            self._buffer += good
            RECORDS_IN.labels(self.name).inc(n)
            self.stats.records += n
        return n

    def _make_chunks(self) -> list[Chunk]:
        msgs = self._held + self._buffer
        self._held = []
        self._buffer = []
        by_tp: dict[TP, list[Message]] = {}
        if len(self.topics) == 1:  # the common case: group by partition number only
            topic = self.topics[0]
            by_partition: dict[int, list[Message]] = {}
            for m in msgs:
                p = m.partition()
                lst = by_partition.get(p)
                if lst is None:
                    by_partition[p] = [m]
                else:
                    lst.append(m)
            by_tp = {(topic, p): lst for p, lst in by_partition.items()}
        else:
            for m in msgs:
                key = (m.topic(), m.partition())
                lst = by_tp.get(key)
                if lst is None:
                    by_tp[key] = [m]
                else:
                    lst.append(m)
        chunks, held = self._replay.cut(by_tp)
        self._held = held
        return chunks

    def _flush(self, consumer: Consumer, give_up_on_failure: bool = False) -> None:
        chunks = self._make_chunks()
        if not chunks:
            return
        started = time.monotonic()
        batch = Batch(self.group, chunks)
        self._revoked.clear()
        if self._pipelined:
            try:
                # The intent is recorded on the handler's writer thread, before the writes.
                future = self.handler.submit(batch, self._record_intent)  # type: ignore[attr-defined]
            except Exception as e:  # failed before writing: complete() retries it
                future = Future()
                future.set_exception(e)
            self._in_flight.append(_InFlight(batch, chunks, future, started))
            while len(self._in_flight) > self.max_in_flight:
                self._complete_oldest(consumer, give_up_on_failure)
            return
        if not self._retrying(consumer, lambda: self._record_intent(batch), give_up_on_failure):
            self._abandoned = True
            return
        letters: list[DeadLetter] = []

        def attempt() -> None:
            nonlocal letters
            letters = self.handler.handle(batch)
            publish_dead_letters(self.dlq_producer, letters, self.name)

        if not self._retrying(consumer, attempt, give_up_on_failure):
            self._abandoned = True
            return
        self._finish(consumer, batch, chunks, letters, started)

    def _record_intent(self, batch: Batch) -> None:
        """Exactly-once: record the batch's offset ranges before anything is written."""
        if self.delivery is Delivery.EXACTLY_ONCE:
            assert self.intent_log is not None
            self.intent_log.record(self.group, batch.chunks)

    def _complete_oldest(self, consumer: Consumer, give_up_on_failure: bool = False) -> None:
        """Wait for the oldest in-flight batch; retry it synchronously if it failed."""
        pending = self._in_flight.popleft()
        letters: list[DeadLetter] = []

        def attempt() -> None:
            nonlocal letters
            if pending.future is not None:
                future, pending.future = pending.future, None
                letters = future.result()
            else:  # a retry
                self._record_intent(pending.batch)
                letters = self.handler.handle(pending.batch)
            publish_dead_letters(self.dlq_producer, letters, self.name)

        self._completing = True
        try:
            done = self._retrying(consumer, attempt, give_up_on_failure)
        finally:
            self._completing = False
        if not done:
            # Shutdown while the sink is down: this batch and every later one stay
            # uncommitted (committing a later batch would skip this one's offsets).
            self._abandoned = True
            self._drop_in_flight()
            return
        self._finish(consumer, pending.batch, pending.chunks, letters, pending.started)

    def _drop_in_flight(self) -> None:
        """Forget the in-flight batches uncommitted, once their writes have ended."""
        for later in self._in_flight:
            if later.future is not None:
                later.future.exception()  # waits for the writes; their outcome no longer matters
        self._in_flight.clear()

    def _finish_in_flight(self, consumer: Consumer, give_up_on_failure: bool = False) -> None:
        while self._in_flight:
            self._complete_oldest(consumer, give_up_on_failure)

    def _finish(
        self,
        consumer: Consumer,
        batch: Batch,
        chunks: list[Chunk],
        letters: list[DeadLetter],
        started: float,
    ) -> None:
        """The batch is written and its dead letters sent: commit and count it."""
        self._commit(consumer, chunks)
        self.progress_at = time.monotonic()
        n = len(batch)
        self.stats.batches += 1
        self.stats.dead_letters += len(letters)
        BATCHES.labels(self.name).inc()
        if letters:
            DLQ_RECORDS.labels(self.name).inc(len(letters))
            remember_dead_letters(self.name, letters)
        BATCH_SECONDS.labels(self.name).observe(time.monotonic() - started)
        log.debug("batch", extra=log_fields(pipeline=self.name, records=n, dlq=len(letters)))

    def _retrying(self, consumer: Consumer, fn, give_up_on_failure: bool) -> bool:
        """Run ``fn`` until it succeeds, pausing consumption between attempts.

        Returns False when it gave up (shutdown requested): the batch stays uncommitted."""
        delay = self.backoff_initial
        try:
            while True:
                try:
                    fn()
                    return True
                except Exception as e:  # the sink is down: back off, never drop
                    self.stats.retries += 1
                    RETRIES.labels(self.name).inc()
                    SINK_DOWN.labels(self.name).set(1)
                    log.warning(
                        "handler failed; retrying",
                        extra=log_fields(
                            pipeline=self.name,
                            error=f"{type(e).__name__}: {e}"[:500],
                            retry_in_s=round(delay, 2),
                        ),
                    )
                    if give_up_on_failure or self._stop.is_set():
                        return False
                    if self._paused is None:
                        self._paused = consumer.assignment()
                        if self._paused:
                            consumer.pause(self._paused)
                    self._sleep_polling(consumer, delay * random.uniform(0.5, 1.0))
                    delay = min(self.backoff_max, delay * 2)
        finally:
            SINK_DOWN.labels(self.name).set(0)
            paused, self._paused = self._paused, None
            if paused:
                try:
                    consumer.resume([p for p in paused if (p.topic, p.partition) in self._assigned])
                except KafkaException:
                    pass

    def _sleep_polling(self, consumer: Consumer, seconds: float) -> None:
        """Sleep while keeping group membership alive (paused: no records are fetched)."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=1000, timeout=min(0.1, seconds))
            if msgs:  # fetched before the pause took effect: keep for the next batch
                self._accept(msgs)

    def _commit(self, consumer: Consumer, chunks: list[Chunk]) -> None:
        if self._abandoned:
            return
        offsets = [
            KafkaTopicPartition(c.topic, c.partition, c.last_offset + 1)
            for c in chunks
            if (c.topic, c.partition) not in self._revoked
        ]
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            self.stats.commits += 1
        except KafkaException as e:
            # A rebalance took the partition: its next owner re-reads (dedup covers it).
            log.warning("commit failed", extra=log_fields(pipeline=self.name, error=str(e)))
            return
        for tp in offsets:
            LAST_OFFSET.labels(self.name, tp.topic, str(tp.partition)).set(tp.offset - 1)
            try:
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high is not None and high >= 0:
                LAG.labels(self.name, tp.topic, str(tp.partition)).set(max(0, high - tp.offset))
