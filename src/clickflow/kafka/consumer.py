"""The one batching consumer framework every pipeline runs on.

A pipeline supplies a :class:`BatchHandler`; the framework does the rest:

* batch triggers: by count (N records), by time (every X seconds) or hybrid (first wins);
* dead letters returned by the handler go to ``<topic>.dlq`` (acked before the commit);
* a failing handler (its sink is down) is retried with exponential backoff and jitter while
  consumption is paused — nothing is dropped and the loop does not spin;
* a batch that keeps failing while the pipeline's stores answer their health check holds a
  record the store rejects: the framework bisects it, sends that record to the DLQ with the
  store's error, and writes the rest (:meth:`BatchConsumer._isolate`);
* fenced writes: a chunk is written only while its consumer owns the partition in the epoch
  the chunk was cut in (checked before every attempt and retry); chunks of partitions
  revoked meanwhile are dropped, never written, and their next owner reads them again;
* offsets are committed manually, only after the handler returned (at-least-once);
* exactly-once mode adds an *intent log*: before the handler runs, the offset range of
  each partition chunk is recorded in the sink's store. After a crash the same ranges are
  replayed as the same chunks, so the handler's deterministic per-chunk dedup tokens
  (``Chunk.token``) make the re-insert a no-op. The Kafka transaction abort of the embedded
  broker does not hide records, so correctness never relies on it.
"""

from __future__ import annotations

import gc
import logging
import math
import random
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaTopicPartition
from prometheus_client import Counter, Gauge, Histogram

from clickflow.exactly_once.replay import ReplayPlan
from clickflow.hot_loops import FEWER_COLLECTIONS, PROMPT_HANDOFFS
from clickflow.kafka.batch import Batch, BatchHandler, BatchTrigger, Chunk, Delivery, IntentLog
from clickflow.kafka.dlq import DeadLetter, publish_dead_letters, remember_dead_letters
from clickflow.kafka.exceptions import Fenced
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
FENCED = Counter(
    "clickflow_consumer_fenced_chunks",
    "Chunks dropped unwritten: their partition moved to another consumer",
    ["pipeline"],
)
ISOLATED = Counter(
    "clickflow_consumer_isolated_records",
    "Records the store kept rejecting while healthy, sent to the DLQ",
    ["pipeline"],
)
SINK_DOWN = Gauge("clickflow_consumer_sink_down", "1 while the handler is failing", ["pipeline"])
#: The consumer's wait when it holds nothing: consume() then asks for one record, so it returns
#: as soon as one comes, and an idle consumer sleeps through its batch timer too (the timer's
#: phase is kept, see ``_loop``): it wakes every 2 s instead of ten times a second (each
#: wake-up of the 0.1 s wait cost ~0.08% of a core). Stopping notices ``stop()`` after it.
IDLE_WAIT_S = 2.0
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

    The consumer owns its handler and its DLQ producer: when :meth:`run` ends (stopped, or
    dead of an exception) it closes both (:meth:`close`), so a consumer runs once.
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
    #: Raises (or returns False) when a store of the pipeline is down. With it, a batch that
    #: failed ``isolate_after`` times while the stores are healthy is bisected down to the
    #: records the store rejects (each tried ``isolate_tries`` times alone), which go to the
    #: DLQ. Without it every failure counts as an outage (pause and retry for ever).
    health_check: Callable[[], object] | None = None
    isolate_after: int = 3
    isolate_tries: int = 2
    #: How often committed intent ranges are handed to the intent log to expire.
    intent_prune_every_s: float = 60.0
    stats: ConsumerStats = field(default_factory=ConsumerStats)

    def __post_init__(self) -> None:
        if self.delivery is Delivery.EXACTLY_ONCE and self.intent_log is None:
            raise ValueError("exactly-once delivery needs an intent log")
        self._stop = threading.Event()
        self._buffer: list[Message] = []
        self._buffer_bytes = 0
        self._record_bytes = 1024  # a guess until the first records are in
        self._held: list[Message] = []
        self._replay = ReplayPlan()
        # The owned partitions and the epoch of each: a new one at every assignment, so a
        # chunk cut before a partition was revoked (and maybe assigned back) is never written.
        self._epochs: dict[TP, int] = {}
        self._last_epoch = 0
        self._committed: dict[TP, int] = {}
        self._last_prune = time.monotonic()
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
        self._closed = False
        self._close_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Release what the consumer owns, once: the handler's ``close()`` when it has one
        (its worker threads, connections, background loops) and the DLQ producer.
        :meth:`run` calls it when it ends; call it for a consumer that never ran."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        close = getattr(self.handler, "close", None)
        if callable(close):
            try:
                close()
            except Exception as e:
                log.warning(
                    "handler close failed",
                    extra=log_fields(pipeline=self.name, error=f"{type(e).__name__}: {e}"[:500]),
                )
        if self.dlq_producer is not None:
            try:
                self.dlq_producer.close()
            except Exception as e:
                log.warning(
                    "DLQ producer close failed",
                    extra=log_fields(pipeline=self.name, error=f"{type(e).__name__}: {e}"[:500]),
                )

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
        except BaseException as e:
            # The frames below hold the consumer: cleared, so it is destroyed below.
            traceback.clear_frames(e.__traceback__)
            raise
        finally:
            self._consumer = None
            self._leave_without_leave_group(consumer)
            del consumer  # the last reference: librdkafka destroys the handle
            self.close()
            log.info(
                "consumer stopped", extra=log_fields(pipeline=self.name, records=self.stats.records)
            )
        return self.stats

    def _leave_without_leave_group(self, consumer: Consumer) -> None:
        """Prepare the end of ``consumer`` without a LeaveGroup: tansu keeps a group's leader
        that leaves while the group forms a generation, and then assigns nothing to anyone
        again (docs/design.md, "Leaving a consumer group"). The batches are committed by now;
        dropping the last reference destroys the handle without a consumer close, and the
        group drops the member after session.timeout.ms, a path tansu handles.

        A handle that stayed referenced (an exception's frames in a reference cycle) would
        go on heartbeating, a member that owns partitions and never reads them: cycles are
        collected first, and a handle still referenced after that is closed after all."""
        if sys.getrefcount(consumer) > 3:  # the caller's, this frame's, getrefcount's
            gc.collect()
        if sys.getrefcount(consumer) > 3:
            log.warning(
                "consumer still referenced at shutdown: closing it with a LeaveGroup",
                extra=log_fields(pipeline=self.name),
            )
            try:
                consumer.close()
            except (KafkaException, RuntimeError):
                pass

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
        epoch = self._last_epoch = max(time.time_ns(), self._last_epoch + 1)
        if self.delivery is Delivery.EXACTLY_ONCE and self.intent_log is not None and tps:
            try:
                epoch = self.intent_log.claim(self.group, sorted(tps), epoch)
            except Exception as e:  # records carry the epoch anyway; a claim fences earlier
                log.warning(
                    "could not claim partitions in the intent log",
                    extra=log_fields(pipeline=self.name, error=f"{type(e).__name__}: {e}"[:500]),
                )
            self._last_epoch = max(self._last_epoch, epoch)
        for tp in tps:
            self._epochs[tp] = epoch
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
        self._drop_partitions({(p.topic, p.partition) for p in partitions})

    def _drop_partitions(self, tps: set[TP]) -> None:
        """Forget partitions this consumer no longer owns: chunks cut for them are fenced off,
        and their uncommitted records are re-read by their next owner."""
        for tp in tps:
            self._epochs.pop(tp, None)
            self._replay.forget(tp)
        self._buffer = [m for m in self._buffer if (m.topic(), m.partition()) not in tps]
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in tps]
        self._buffer_bytes = sum(map(len, self._buffer)) + sum(map(len, self._held))

    # -- main loop ---------------------------------------------------------------------------

    def _loop(self, consumer: Consumer) -> None:
        max_records = self.trigger.max_records
        cap_records = self.trigger.record_cap
        cap_bytes = self.trigger.max_buffer_bytes
        # Sparse traffic (BatchTrigger.sparse_seconds): a batch waits for more records, except
        # the one a record opens after a longer quiet spell (nothing held for sparse_seconds):
        # that lone record is cut after max_seconds, as without the rule.
        sparse_gap = self.trigger.sparse_seconds
        empty_since: float | None = time.monotonic()  # when the consumer last held nothing
        after_gap = False

        def seconds_for(held: int) -> float | None:
            return self.trigger.max_seconds if after_gap else self.trigger.seconds_for(held)

        last_flush = time.monotonic()
        new_since_flush = 0
        while not self._stop.is_set():
            idle = not (self._buffer or self._held or self._in_flight)
            if idle:
                self.progress_at = time.monotonic()
            timeout = IDLE_WAIT_S if idle else 0.1
            held = len(self._buffer) + len(self._held)
            max_seconds = seconds_for(held)
            if max_seconds is not None and not idle:
                # Whole milliseconds, rounded up: consume() truncates its timeout to whole
                # milliseconds, so the last fraction of a millisecond before the timer is due
                # was a wait of 0 ms, and the loop spun (~100 calls) until it was due.
                left = math.ceil((last_flush + max_seconds - time.monotonic()) * 1000) / 1000
                timeout = max(0.0, min(timeout, left))
            room = (cap_bytes - self._buffer_bytes) // self._record_bytes + 1
            want = max(1, min(self.fetch_size, cap_records - held, room))
            if max_records is not None:
                want = max(1, min(want, max_records - len(self._buffer)))
            if idle:
                want = 1  # consume() waits for `want` records or the timeout: return on the first
            msgs = consumer.consume(num_messages=want, timeout=timeout)
            if idle and max_seconds is not None:
                # Holding nothing, the loop slept through the timer's expiries, where it used to
                # wake only to restart the timer: restart it at the last expiry it slept through,
                # so a record that just came is cut exactly when it would have been.
                periods = (time.monotonic() - last_flush) // max_seconds
                if periods > 0:
                    last_flush += periods * max_seconds
            if msgs:
                added = self._accept(msgs)
                new_since_flush += added
                if added and empty_since is not None:
                    quiet = time.monotonic() - empty_since
                    after_gap = sparse_gap is not None and quiet >= sparse_gap
                    empty_since = None
            while self._in_flight and self._in_flight[0].future.done():
                self._complete_oldest(consumer)
            now = time.monotonic()
            held = len(self._buffer) + len(self._held)
            max_seconds = seconds_for(held)
            # The memory bound holds in every mode: the buffer is handed over when full.
            full = held >= cap_records or self._buffer_bytes >= cap_bytes
            due = (
                full
                or (max_records is not None and len(self._buffer) >= max_records)
                or (max_seconds is not None and now - last_flush >= max_seconds)
            )
            if due:
                if new_since_flush or self._held:
                    self._flush(consumer)
                elif self._in_flight:
                    self._finish_in_flight(consumer)
                new_since_flush = 0
                last_flush = time.monotonic()
                after_gap = False
            if empty_since is None and not (self._buffer or self._held):
                empty_since = time.monotonic()
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
            size = sum(map(len, good))  # value sizes, summed in C
            self._buffer_bytes += size
            self._record_bytes = max(1, size // n)  # bounds the next fetch (byte cap)
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
        self._buffer_bytes = sum(map(len, held)) if held else 0
        epochs = self._epochs
        for c in chunks:
            c.epoch = epochs.get((c.topic, c.partition), -1)
        return chunks

    def _flush(self, consumer: Consumer, give_up_on_failure: bool = False) -> None:
        chunks = self._make_chunks()
        if not chunks:
            return
        started = time.monotonic()
        batch = Batch(self.group, chunks)
        if self._pipelined:
            try:
                # The intent is recorded on the handler's writer thread, before the writes.
                future = self.handler.submit(batch, self._record_intent)  # type: ignore[attr-defined]
            except Exception as e:  # failed before writing: complete() retries it
                future = Future()
                future.set_exception(e)
            self._in_flight.append(_InFlight(batch, future, started))
            while len(self._in_flight) > self.max_in_flight:
                self._complete_oldest(consumer, give_up_on_failure)
            return
        done = self._deliver(consumer, batch, give_up_on_failure)
        if done is None:
            self._abandoned = True
            return
        self._finish(consumer, *done, started)

    def _record_intent(self, batch: Batch) -> None:
        """Exactly-once: record the batch's offset ranges before anything is written."""
        if self.delivery is Delivery.EXACTLY_ONCE:
            assert self.intent_log is not None
            self.intent_log.record(self.group, batch.chunks)

    def _complete_oldest(self, consumer: Consumer, give_up_on_failure: bool = False) -> None:
        """Wait for the oldest in-flight batch; retry it synchronously if it failed."""
        pending = self._in_flight.popleft()
        future, pending.future = pending.future, None
        self._completing = True
        try:
            done = self._deliver(consumer, pending.batch, give_up_on_failure, future)
        finally:
            self._completing = False
        if done is None:
            # Shutdown while the sink is down: this batch and every later one stay
            # uncommitted (committing a later batch would skip this one's offsets).
            self._abandoned = True
            self._drop_in_flight()
            return
        self._finish(consumer, *done, pending.started)

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
        self, consumer: Consumer, batch: Batch, letters: list[DeadLetter], started: float
    ) -> None:
        """The batch is written and its dead letters sent: commit and count it."""
        self._commit(consumer, batch.chunks)
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

    def _owns(self, chunk: Chunk) -> bool:
        return self._epochs.get((chunk.topic, chunk.partition)) == chunk.epoch

    def _fence(self, batch: Batch) -> Batch:
        """The chunks of ``batch`` this consumer still owns, in the epoch they were cut in."""
        owned = [c for c in batch.chunks if self._owns(c)]
        if len(owned) == len(batch.chunks):
            return batch
        FENCED.labels(self.name).inc(len(batch.chunks) - len(owned))
        log.info(
            "dropped chunks of revoked partitions unwritten",
            extra=log_fields(pipeline=self.name, chunks=len(batch.chunks) - len(owned)),
        )
        return Batch(batch.group, owned)

    def _fenced_off(self, consumer: Consumer, e: Fenced) -> None:
        """The intent log says a later owner has these partitions: stop reading and writing
        them until the group assigns them again (this consumer is a zombie for them)."""
        log.warning(
            "fenced off by a later owner",
            extra=log_fields(pipeline=self.name, partitions=sorted(e.partitions)),
        )
        mine = [KafkaTopicPartition(t, p) for t, p in e.partitions if (t, p) in self._epochs]
        self._drop_partitions(set(e.partitions))
        try:
            consumer.pause(mine)
        except KafkaException:
            pass

    def _store_healthy(self) -> bool:
        if self.health_check is None:
            return False
        try:
            return self.health_check() is not False
        except Exception:
            return False

    def _deliver(
        self,
        consumer: Consumer,
        batch: Batch,
        give_up_on_failure: bool,
        future: Future[list[DeadLetter]] | None = None,
    ) -> tuple[Batch, list[DeadLetter]] | None:
        """Write ``batch`` (``future``: its first attempt, already submitted) until it is
        written, pausing consumption between attempts. Before each attempt the batch is
        fenced to the chunks this consumer still owns.

        Returns what was written and its dead letters (sent), or None when it gave up
        (shutdown requested): the batch stays uncommitted."""
        delay = self.backoff_initial
        failures = 0
        try:
            while True:
                if future is None:
                    batch = self._fence(batch)
                    if not batch.chunks:
                        return batch, []
                try:
                    if future is not None:
                        first, future = future, None
                        letters = first.result()
                    else:
                        self._record_intent(batch)
                        letters = self.handler.handle(batch)
                    publish_dead_letters(self.dlq_producer, letters, self.name)
                    return batch, letters
                except Fenced as e:
                    self._fenced_off(consumer, e)
                    continue
                except Exception as e:  # the sink is down: back off, never drop
                    failures += 1
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
                        return None
                    if failures >= self.isolate_after and self._store_healthy():
                        try:
                            letters = self._isolate(batch)
                        except Fenced as fenced:
                            self._fenced_off(consumer, fenced)
                            continue
                        if letters is not None:
                            publish_dead_letters(self.dlq_producer, letters, self.name)
                            return batch, letters
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
                    consumer.resume([p for p in paused if (p.topic, p.partition) in self._epochs])
                except KafkaException:
                    pass

    def _isolate(self, batch: Batch) -> list[DeadLetter] | None:
        """Write ``batch`` piece by piece: the records the store rejects while it answers its
        health check become dead letters (reason: the store's error), the rest is written.

        Each chunk is tried alone, and a failing piece is split in two halves by position,
        down to single records. The pieces depend only on the chunk and on which records the
        store rejects, so a replay of the chunk (after a crash) cuts the same pieces with the
        same deduplication tokens. Returns None, to go back to pausing and retrying, when the
        stores stop answering their health check meanwhile."""
        try:
            self._record_intent(batch)
        except Fenced:
            raise
        except Exception:
            return None
        letters: list[DeadLetter] = []
        for chunk in batch.chunks:
            pieces = [chunk]
            while pieces:
                piece = pieces.pop()
                error: Exception | None = None
                for _ in range(self.isolate_tries):
                    try:
                        letters += self.handler.handle(Batch(batch.group, [piece]))
                        error = None
                        break
                    except Fenced:
                        raise
                    except Exception as e:
                        error = e
                        if not self._store_healthy():
                            return None
                if error is None:
                    continue
                msgs = piece.messages
                if len(msgs) == 1:
                    reason = f"store rejected the record: {type(error).__name__}: {error}"
                    letters.append(DeadLetter(msgs[0], reason[:2000]))
                    ISOLATED.labels(self.name).inc()
                    log.warning(
                        "record rejected by a healthy store sent to the DLQ",
                        extra=log_fields(
                            pipeline=self.name,
                            topic=piece.topic,
                            partition=piece.partition,
                            offset=piece.first_offset,
                            error=reason[:500],
                        ),
                    )
                    continue
                mid = len(msgs) // 2
                left, right = msgs[:mid], msgs[mid:]
                t, p, e = piece.topic, piece.partition, piece.epoch
                # A stack: the left half is written first, pieces stay in offset order.
                pieces.append(Chunk(t, p, right[0].offset(), piece.last_offset, right, e))
                pieces.append(Chunk(t, p, piece.first_offset, left[-1].offset(), left, e))
        return letters

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
            if self._owns(c)
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
            self._committed[(tp.topic, tp.partition)] = tp.offset
        self._prune_intents()
        for tp in offsets:
            LAST_OFFSET.labels(self.name, tp.topic, str(tp.partition)).set(tp.offset - 1)
            try:
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high is not None and high >= 0:
                LAG.labels(self.name, tp.topic, str(tp.partition)).set(max(0, high - tp.offset))

    def _prune_intents(self) -> None:
        """Now and then, let the intent log expire what is committed (kept until then)."""
        if self.intent_log is None or self.delivery is not Delivery.EXACTLY_ONCE:
            return
        if time.monotonic() - self._last_prune < self.intent_prune_every_s:
            return
        self._last_prune = time.monotonic()
        try:
            self.intent_log.forget_committed(self.group, dict(self._committed))
        except Exception as e:  # expiry can wait for the next round
            log.warning(
                "could not expire committed intents",
                extra=log_fields(pipeline=self.name, error=f"{type(e).__name__}: {e}"[:500]),
            )
