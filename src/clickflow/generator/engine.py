"""The traffic engine: rates and modes, the event mix, producer patterns, partitioners,
retries with backoff, metrics and the ground-truth file. Domains supply only a factory.

Producer patterns:

* ``sync``: wait for the broker's ack of each message before the next (critical data);
* ``async``: produce with a delivery callback, acks handled as they come;
* ``batch``: collect N events or X ms worth, send them together and wait for the acks.

Partitioners: ``key`` (the factory's key, e.g. page_id: one page stays on one partition),
``round-robin`` and ``random``. A failed delivery is re-sent with exponential backoff (capped);
the engine keeps going when the broker comes back and never exits silently.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path
from typing import IO

import orjson
from confluent_kafka import KafkaError, KafkaException, Message

from clickflow.config import Settings
from clickflow.generator.controls import GeneratorControls
from clickflow.generator.factory import EventFactory, GeneratedEvent
from clickflow.generator.metrics import (
    LATENCY_BUCKETS,
    Stats,
    export_metrics,
    latency_quantile,
    stop_exporting,
)
from clickflow.generator.modes import RateModel
from clickflow.generator.options import GeneratorOptions, Mix
from clickflow.hot_loops import FEWER_COLLECTIONS
from clickflow.kafka.config import producer_config
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import ensure_topics
from clickflow.logs import log_fields

log = logging.getLogger("clickflow.generator")

#: The longest the sending loop sleeps between events: at demo rates it used to wake every
#: 10 ms whether an event was due or not (5% of a core for the demo's four domains).
IDLE_WAIT_S = 0.1


class _Pending:
    """One record on its way to the broker; also its own delivery callback, so that no
    closure is allocated per event."""

    __slots__ = ("engine", "event", "duplicate", "attempt")

    def __init__(self, engine: Engine, event: GeneratedEvent, duplicate: bool) -> None:
        self.engine = engine
        self.event = event
        self.duplicate = duplicate
        self.attempt = 0

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        self.engine._delivered(err, msg, self)


class Engine(GeneratorControls):
    """Generate ``factory`` events to Kafka, under the controls of ``GeneratorControls``."""

    def __init__(
        self,
        settings: Settings,
        factory: EventFactory,
        domain: str,
        rate_model: RateModel | None = None,
        mix: Mix | None = None,
        options: GeneratorOptions | None = None,
        truth_path: Path | None = None,
        schedule: list[tuple[str, float]] | None = None,
    ) -> None:
        super().__init__(domain, rate_model, mix, options, schedule)
        self.settings = settings
        self.factory = factory
        self._rng = random.Random(self.options.seed)
        self._recent: list[GeneratedEvent] = []  # candidates for duplicates
        self._retry_heap: list[tuple[float, int, _Pending]] = []
        self._retry_seq = 0
        self._truth: IO[bytes] | None = open(truth_path, "wb") if truth_path else None
        self._rr = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        export_metrics(self)
        conf = {
            "retries": 5,
            "retry.backoff.ms": int(self.options.retry_initial * 1000),
            "retry.backoff.max.ms": int(self.options.retry_max * 1000),
            "message.timeout.ms": 10000,
            "partitioner": "murmur2_random",
        }
        if self.options.pattern == "sync":
            conf["linger.ms"] = 0
        conf.update(self.options.producer_overrides)
        self.producer = EventProducer(producer_config(settings, **conf))
        ensure_topics(settings.kafka_bootstrap, [factory.topic])
        self.partitions = factory.topic.partitions
        self._topic = factory.topic.name
        self._produce = self.producer.raw.produce

    # -- event selection -----------------------------------------------------------------------

    def next_event(self, now: float) -> tuple[GeneratedEvent, bool]:
        """Pick the next event by the mix; returns (event, is_duplicate)."""
        r = self._rng.random()
        mix = self.mix
        if r < mix.duplicate_share and self._recent:
            self.stats.duplicates += 1
            return self._rng.choice(self._recent), True
        if r < mix.duplicate_share + mix.broken_share:
            kind = self._rng.choice(self.factory.breakages)
            self.stats.broken += 1
            return self.factory.broken(self._rng, now, kind), False
        ev = self.factory.valid(self._rng, now)
        self.stats.valid += 1
        recent = self._recent
        if len(recent) < 1000:
            recent.append(ev)
        else:
            recent[int(r * 1_000_000) % 1000] = ev
        return ev, False

    def _partition(self) -> int:
        p = self.options.partitioner
        if p == "key":
            return -1
        if p == "round-robin":
            self._rr = (self._rr + 1) % self.partitions
            return self._rr
        return self._rng.randrange(self.partitions)

    # -- sending -------------------------------------------------------------------------------

    def _send(self, pending: _Pending) -> None:
        ev = pending.event
        # Positional arguments (cheaper than keywords); -1 = librdkafka's partitioner (by key).
        partition = -1 if self.options.partitioner == "key" else self._partition()
        while True:
            try:
                self._produce(self._topic, ev.value, ev.key, partition, pending)
                break
            except BufferError:  # local queue full: serve acks, then try again
                self.producer.poll(0.05)
        self.stats.sent += 1

    def _delivered(self, err: KafkaError | None, msg: Message, pending: _Pending) -> None:
        if err is None:
            self.stats.acked += 1
            latency = msg.latency()
            if latency is not None:
                self.latency_counts[bisect_left(LATENCY_BUCKETS, latency)] += 1
                self.latency_sum += latency
            if self._truth is not None:
                ev = pending.event
                line = {
                    "id": ev.identity,
                    "dup": pending.duplicate,
                    "broken": ev.broken,
                    "partition": msg.partition(),
                    "offset": msg.offset(),
                }
                if ev.truth:
                    line["truth"] = ev.truth
                self._truth.write(orjson.dumps(line) + b"\n")
            return
        self.stats.failed += 1
        pending.attempt += 1
        if self.options.max_attempts and pending.attempt >= self.options.max_attempts:
            log.error("giving up on a record", extra=log_fields(error=str(err)))
            return
        delay = min(self.options.retry_max, self.options.retry_initial * 2**pending.attempt)
        self._retry_seq += 1
        heapq.heappush(self._retry_heap, (time.monotonic() + delay, self._retry_seq, pending))

    def _resend_due(self) -> None:
        now = time.monotonic()
        while self._retry_heap and self._retry_heap[0][0] <= now:
            _, _, pending = heapq.heappop(self._retry_heap)
            self.stats.retried += 1
            self._send(pending)

    def _current_rate(self, now: float) -> float:
        with self._lock:
            t = now - self._mode_started
            if self.schedule:
                total = sum(s for _, s in self.schedule)
                pos = t % total
                for mode, seconds in self.schedule:
                    if pos < seconds:
                        if self.rates.mode != mode:
                            self.rates.mode = mode
                        break
                    pos -= seconds
            return self.rates.rate_at(t)

    def run(
        self,
        count: int | None = None,
        duration: float | None = None,
        on_tick: Callable[[Engine], None] | None = None,
        tick_every: float = 0.5,
    ) -> Stats:
        """Send until ``count`` events were generated, ``duration`` elapsed, or ``stop()``;
        ``on_tick(self)`` is called every ``tick_every`` seconds from this thread."""
        with FEWER_COLLECTIONS:
            return self._run(count, duration, on_tick, tick_every)

    def _run(
        self,
        count: int | None,
        duration: float | None,
        on_tick: Callable[[Engine], None] | None,
        tick_every: float,
    ) -> Stats:
        opts = self.options
        pattern = opts.pattern
        self.stats = stats = Stats()
        next_event = self.next_event
        send = self._send
        start = time.monotonic()
        last = start
        credit = 0.0
        batch: list[_Pending] = []
        batch_started = start
        next_tick = start
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if duration is not None and now - start >= duration:
                    break
                generated = stats.valid + stats.broken + stats.duplicates
                if count is not None and generated >= count:
                    break
                rate = self._current_rate(now)
                credit = min(credit + rate * (now - last), max(rate * 2.0, 1.0))
                last = now
                due = int(credit)
                if count is not None:
                    due = min(due, count - generated)
                due = min(due, 5000)
                credit -= due
                wall = time.time()
                if pattern == "async":
                    for _ in range(due):
                        ev, dup = next_event(wall)
                        send(_Pending(self, ev, dup))
                elif pattern == "batch":
                    for _ in range(due):
                        ev, dup = next_event(wall)
                        batch.append(_Pending(self, ev, dup))
                        if len(batch) >= opts.batch_size:
                            self._send_batch(batch)
                            batch = []
                            batch_started = time.monotonic()
                    if batch and (time.monotonic() - batch_started) * 1000 >= opts.batch_ms:
                        self._send_batch(batch)
                        batch = []
                        batch_started = time.monotonic()
                else:  # sync
                    for _ in range(due):
                        ev, dup = next_event(wall)
                        send(_Pending(self, ev, dup))
                        self._wait_acked()
                self._resend_due()
                self.producer.poll(0)
                if on_tick is not None and now >= next_tick:
                    on_tick(self)
                    next_tick = now + tick_every
                if due == 0:
                    # Sleep until the next event is due (at most IDLE_WAIT_S, so a new rate
                    # or mode takes effect soon); stop() wakes it at once.
                    wait = (1.0 - credit) / rate if rate > 0 else IDLE_WAIT_S
                    self._stop.wait(min(max(wait, 0.0005), IDLE_WAIT_S))
        finally:
            if batch:
                self._send_batch(batch)
            self._drain()
            if self._truth is not None:
                self._truth.flush()
            stats.ended = time.monotonic()
        return self.stats

    def _send_batch(self, batch: list[_Pending]) -> None:
        for pending in batch:
            self._send(pending)
        self.producer.flush(30)

    def _wait_acked(self) -> None:
        while self.stats.acked + self.stats.failed < self.stats.sent:
            self.producer.poll(0.01)
            if self._stop.is_set():
                return

    def _drain(self, timeout: float = 60.0) -> None:
        """Wait for outstanding acks and due retries (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.producer.flush(1.0)
            except KafkaException:
                pass
            if not self._retry_heap and self.stats.acked + self.stats.failed >= self.stats.sent:
                break
            if self._retry_heap:
                wait = self._retry_heap[0][0] - time.monotonic()
                if wait > 0:
                    time.sleep(min(wait, 0.5))
                self._resend_due()

    def latency_quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile of ack latency."""
        return latency_quantile(self.latency_counts, q)

    def close(self) -> None:
        stop_exporting(self)
        if self._truth is not None:
            self._truth.close()
            self._truth = None
