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
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import orjson
from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from clickflow.config import Settings
from clickflow.generator.factory import EventFactory, GeneratedEvent
from clickflow.generator.modes import RateModel, validate_mode
from clickflow.hot_loops import FEWER_COLLECTIONS
from clickflow.kafka.config import producer_config
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import ensure_topics
from clickflow.logs import log_fields

log = logging.getLogger("clickflow.generator")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Measured(Protocol):
    """What the metrics export reads: an engine, or a pool of worker processes."""

    domain: str
    stats: Stats
    latency_counts: list[int]  # per LATENCY_BUCKETS bound, then one for +Inf
    latency_sum: float


class _EngineCollector:
    """Exports every engine's counters and ack-latency histogram at scrape time.

    Counting in plain ints and exporting on scrape keeps the per-event cost at a few
    hundred nanoseconds (prometheus_client's own inc/observe cost ~2 us per event)."""

    def __init__(self) -> None:
        self.engines: list[Measured] = []

    def collect(self):
        counters = {
            name: CounterMetricFamily(f"clickflow_generator_{name}", help_, labels=["domain"])
            for name, help_ in (
                ("sent", "Records handed to the producer"),
                ("acked", "Records acknowledged by the broker"),
                ("failed", "Deliveries that failed"),
                ("retried", "Records re-sent after a failure"),
            )
        }
        hist = HistogramMetricFamily(
            "clickflow_generator_ack_latency_seconds", "Send-to-ack latency", labels=["domain"]
        )
        for e in list(self.engines):
            for name, fam in counters.items():
                fam.add_metric([e.domain], getattr(e.stats, name))
            acc, buckets = 0, []
            for bound, n in zip(LATENCY_BUCKETS, e.latency_counts, strict=False):
                acc += n
                buckets.append((str(bound), acc))
            buckets.append(("+Inf", acc + e.latency_counts[-1]))
            hist.add_metric([e.domain], buckets, e.latency_sum)
        yield from counters.values()
        yield hist


_COLLECTOR = _EngineCollector()
REGISTRY.register(_COLLECTOR)


def export_metrics(source: Measured) -> None:
    """Include ``source`` in the Prometheus export (``/metrics``)."""
    _COLLECTOR.engines.append(source)


def stop_exporting(source: Measured) -> None:
    if source in _COLLECTOR.engines:
        _COLLECTOR.engines.remove(source)


PATTERNS = ("sync", "async", "batch")
PARTITIONERS = ("key", "round-robin", "random")


@dataclass
class Mix:
    """Shares of the event stream (the factory decides how to make/break each event)."""

    broken_share: float = 0.05
    duplicate_share: float = 0.01

    def __post_init__(self) -> None:
        for name in ("broken_share", "duplicate_share"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {v!r}")
        if self.broken_share + self.duplicate_share > 1.0:
            raise ValueError("broken_share + duplicate_share must not exceed 1")


@dataclass
class GeneratorOptions:
    pattern: str = "async"
    partitioner: str = "key"
    batch_size: int = 1000  # batch pattern: N
    batch_ms: float = 50.0  # batch pattern: X
    retry_initial: float = 0.1
    retry_max: float = 5.0
    max_attempts: int = 0  # 0 = retry until it goes through
    seed: int = 42
    producer_overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}: use {', '.join(PATTERNS)}")
        if self.partitioner not in PARTITIONERS:
            raise ValueError(
                f"unknown partitioner {self.partitioner!r}: use {', '.join(PARTITIONERS)}"
            )
        if not 1 <= self.batch_size <= 1_000_000:
            raise ValueError("batch_size must be between 1 and 1,000,000")
        if self.batch_ms <= 0:
            raise ValueError("batch_ms must be positive")


@dataclass
class Stats:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    retried: int = 0
    valid: int = 0
    broken: int = 0
    duplicates: int = 0
    started: float = field(default_factory=time.monotonic)
    #: When the run ended (after its final flush): the rate of a finished run stays put.
    ended: float | None = None

    @classmethod
    def total(cls, parts: list[Stats]) -> Stats:
        """The sum of several engines' counters, started when the first one started."""
        out = cls()
        for name in ("sent", "acked", "failed", "retried", "valid", "broken", "duplicates"):
            setattr(out, name, sum(getattr(s, name) for s in parts))
        if parts:
            out.started = min(s.started for s in parts)
            if all(s.ended is not None for s in parts):
                out.ended = max(s.ended for s in parts)  # type: ignore[type-var]
        return out

    @property
    def generated(self) -> int:
        return self.valid + self.broken + self.duplicates

    def rate(self) -> float:
        elapsed = (self.ended or time.monotonic()) - self.started
        return self.acked / elapsed if elapsed > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "sent": self.sent,
            "acked": self.acked,
            "failed": self.failed,
            "retried": self.retried,
            "valid": self.valid,
            "broken": self.broken,
            "duplicates": self.duplicates,
            "acked_per_s": round(self.rate(), 1),
        }


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


class Engine:
    """Generate ``factory`` events to Kafka. Thread-safe controls: ``set_mode``, ``set_rate``,
    ``set_mix``; ``stop`` from any thread."""

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
        self.settings = settings
        self.factory = factory
        self.domain = domain
        self.rates = rate_model or RateModel()
        self.mix = mix or Mix()
        self.options = options or GeneratorOptions()
        self.schedule = schedule
        self.stats = Stats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rng = random.Random(self.options.seed)
        self._recent: list[GeneratedEvent] = []  # candidates for duplicates
        self._retry_heap: list[tuple[float, int, _Pending]] = []
        self._retry_seq = 0
        self._truth: IO[bytes] | None = open(truth_path, "wb") if truth_path else None
        self._rr = 0
        self._mode_started = time.monotonic()
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

    # -- controls ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def set_mode(self, mode: str) -> None:
        validate_mode(mode)
        with self._lock:
            self.rates.mode = mode
            self.schedule = None
            self._mode_started = time.monotonic()

    def set_rate(self, rate: float) -> None:
        if not 0 < rate <= 10_000_000:
            raise ValueError("rate must be between 0 and 10,000,000 events/s")
        with self._lock:
            self.rates.rate = float(rate)
            self.rates.mode = "fixed"
            self.schedule = None
            self._mode_started = time.monotonic()

    def set_schedule(self, schedule: list[tuple[str, float]]) -> None:
        with self._lock:
            self.schedule = schedule

    def set_mix(self, mix: Mix) -> None:
        with self._lock:
            self.mix = mix

    @property
    def mode(self) -> str:
        return self.rates.mode

    def state(self) -> dict:
        with self._lock:
            return {
                "domain": self.domain,
                "mode": self.rates.mode,
                "rate": self.rates.rate,
                "schedule": self.schedule,
                "mix": {
                    "broken_share": self.mix.broken_share,
                    "duplicate_share": self.mix.duplicate_share,
                },
                "pattern": self.options.pattern,
                "partitioner": self.options.partitioner,
                "stats": self.stats.as_dict(),
            }

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
                    wait = (1.0 - credit) / rate if rate > 0 else 0.01
                    time.sleep(min(max(wait, 0.0005), 0.01))
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
        total = sum(self.latency_counts)
        if not total:
            return None
        acc = 0
        for bound, n in zip(LATENCY_BUCKETS, self.latency_counts, strict=False):
            acc += n
            if acc >= q * total:
                return bound
        return float("inf")

    def close(self) -> None:
        stop_exporting(self)
        if self._truth is not None:
            self._truth.close()
            self._truth = None


def read_truth(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
