"""Running pipelines: a pipeline = topics + a batch handler on the one consumer framework."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import Counter, Gauge

from clickflow.config import Settings
from clickflow.domains import DOMAINS, domain_module
from clickflow.kafka.batch import BatchHandler, BatchTrigger, Delivery, IntentLog
from clickflow.kafka.config import consumer_config, producer_config
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec, dlq_topic, ensure_topics
from clickflow.logs import log_fields
from clickflow.observability import tracing

log = logging.getLogger("clickflow.pipelines")


@dataclass
class PipelineOptions:
    trigger: BatchTrigger = field(default_factory=BatchTrigger)
    delivery: Delivery = Delivery.EXACTLY_ONCE
    group: str | None = None  # default: "clickflow-<pipeline name>"


@dataclass
class PipelineSpec:
    name: str
    topics: list[TopicSpec]
    store: Literal["clickhouse", "postgres"]
    build_handler: Callable[[Settings, PipelineOptions], BatchHandler]
    build_intent_log: Callable[[Settings], IntentLog] | None = None
    default_options: PipelineOptions = field(default_factory=PipelineOptions)
    #: Raises when a store the handler writes to is down. With it, a batch that keeps
    #: failing while every store is healthy has its rejected records isolated to the DLQ
    #: (see :class:`~clickflow.kafka.consumer.BatchConsumer`); without it, every failure is
    #: an outage (pause and retry).
    health_check: Callable[[Settings], object] | None = None


def stores_answer(*stores: str) -> Callable[[Settings], bool]:
    """A pipeline's health check: every named store (clickhouse, postgres, redis) answers.

    The consumer framework asks it when a batch keeps failing: stores that answer mean the
    batch holds a record they reject (isolated to the DLQ); otherwise it is an outage."""
    from clickflow.stores import clickhouse, postgres, redis

    pings = {"clickhouse": clickhouse.ping, "postgres": postgres.ping, "redis": redis.ping}
    chosen = [pings[name] for name in stores]

    def check(settings: Settings) -> bool:
        return all(ping(settings) == "ok" for ping in chosen)

    return check


def all_pipelines() -> dict[str, PipelineSpec]:
    out: dict[str, PipelineSpec] = {}
    for domain in DOMAINS:
        mod = domain_module(domain, "pipeline")
        if mod is not None:
            for spec in getattr(mod, "PIPELINES", []):
                out[spec.name] = spec
    return out


#: How long the broker may hold a pipeline consumer's fetch that finds nothing (librdkafka
#: ``fetch.wait.max.ms``; other clients keep the 500 ms of ``consumer_config``). tansu holds
#: it by re-reading every partition of the fetch after half the time left, then half of what
#: is left, down to a millisecond, and answers at the first read that finds records. An idle
#: stack's five pipeline consumers (28 partitions) cost it ~1.4% of a core at 500 ms, half
#: that at 1 s (~log2(wait) reads per wait). A record sent to an idle pipeline waits for the
#: next read, at most half this (0.5 s); busy consumers never wait, since every read finds
#: records. Pipelines run for hours, so the 1 s a new partition may wait behind a fetch
#: already in flight (right after an assignment) is paid once per rebalance.
PIPELINE_FETCH_WAIT_MS = 1000


def build_consumer(
    settings: Settings, spec: PipelineSpec, options: PipelineOptions | None = None
) -> BatchConsumer:
    opts = options or spec.default_options
    group = opts.group or f"clickflow-{spec.name}"
    ensure_topics(
        settings.kafka_bootstrap,
        spec.topics + [TopicSpec(dlq_topic(t.name), t.partitions) for t in spec.topics],
    )
    intent_log = None
    if opts.delivery is Delivery.EXACTLY_ONCE:
        if spec.build_intent_log is None:
            raise ValueError(f"pipeline {spec.name} does not support exactly-once")
        intent_log = spec.build_intent_log(settings)
    check = spec.health_check
    return BatchConsumer(
        name=spec.name,
        topics=[t.name for t in spec.topics],
        handler=tracing.traced(spec.name, spec.build_handler(settings, opts)),
        consumer_conf=consumer_config(
            settings, group, **{"fetch.wait.max.ms": PIPELINE_FETCH_WAIT_MS}
        ),
        dlq_producer=EventProducer(producer_config(settings, **{"linger.ms": 1})),
        trigger=opts.trigger,
        delivery=opts.delivery,
        intent_log=intent_log,
        health_check=(lambda: check(settings)) if check is not None else None,
    )


def build_consumers(
    settings: Settings, spec: PipelineSpec, options: PipelineOptions | None = None, count: int = 1
) -> list[BatchConsumer]:
    """``count`` consumers of the pipeline in one group: Kafka spreads the partitions over
    them (each has its own handler; in one process they share the one ClickHouse)."""
    if count < 1:
        raise ValueError("the number of consumers must be at least 1")
    return [build_consumer(settings, spec, options) for _ in range(count)]


PIPELINE_RESTARTS = Counter(
    "clickflow_pipeline_restarts",
    "Pipeline consumers restarted after their thread died (an exception escaped the loop)",
    ["pipeline"],
)
PIPELINE_UP = Gauge("clickflow_pipeline_up", "1 while the pipeline's consumer runs", ["pipeline"])


class PipelineRunner:
    """One pipeline's consumer in a thread, rebuilt and restarted with backoff when it dies.

    A consumer's loop ends with an exception when something outside the handler's retries
    fails, e.g. the assignment callback (``committed()`` timing out, the intent log's
    ``pending()`` failing). The consumer and its handler are built anew from ``build`` (the
    old ones may hold half-done state); the new consumer resumes from the committed offsets.
    The old consumer has closed its handler and DLQ producer when its run ended, so restarts
    leave no threads or connections behind.
    """

    def __init__(
        self,
        name: str,
        build: Callable[[], BatchConsumer],
        stall_seconds: float = 120.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        self.name = name
        self._build = build
        self.stall_seconds = stall_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.restarts = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        # Built here, so a configuration error fails the start instead of a thread.
        self.consumer: BatchConsumer | None = build()
        self.thread = threading.Thread(target=self._run, name=f"pipeline-{name}", daemon=True)

    def start(self) -> PipelineRunner:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        consumer = self.consumer
        if consumer is not None:
            consumer.stop()
            if not self.thread.is_alive():  # never started: nothing else will close it
                consumer.close()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        try:
            self._supervise()
        finally:  # stopped before its consumer ran: nothing else closes it
            consumer = self.consumer
            if consumer is not None:
                consumer.close()

    def _supervise(self) -> None:
        delay = self.backoff_initial
        while not self._stop.is_set():
            consumer = self.consumer
            started = time.monotonic()
            try:
                if consumer is None:
                    consumer = self.consumer = self._build()
                    if self._stop.is_set():
                        consumer.stop()
                PIPELINE_UP.labels(self.name).set(1)
                consumer.run()
                if self._stop.is_set() or consumer.stopping:
                    return
                self.last_error = "the consumer loop returned without being stopped"
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}"[:500]
            finally:
                PIPELINE_UP.labels(self.name).set(0)
            self.consumer = None
            if consumer is not None:
                consumer.close()  # done by its run() already, unless build() or run() failed early
            if time.monotonic() - started > 10 * self.backoff_max:
                delay = self.backoff_initial  # it ran fine for a long while: start over
            self.restarts += 1
            PIPELINE_RESTARTS.labels(self.name).inc()
            log.error(
                "pipeline died; restarting",
                extra=log_fields(
                    pipeline=self.name, error=self.last_error, restart_in_s=round(delay, 2)
                ),
            )
            if self._stop.wait(delay):
                return
            delay = min(self.backoff_max, delay * 2)

    def health(self) -> str:
        """ "ok", or why not: dead, waiting to restart, or stalled with records pending."""
        if self._stop.is_set():
            return "ok"
        if not self.thread.is_alive():
            return f"dead: {self.last_error or 'not started'}"
        consumer = self.consumer
        if consumer is None:
            return f"restarting after: {self.last_error}"
        idle = time.monotonic() - consumer.progress_at
        if idle > self.stall_seconds:
            return f"stalled: records pending and nothing committed for {idle:.0f} s"
        return "ok"


def start_runners(
    settings: Settings,
    specs: list[tuple[PipelineSpec, PipelineOptions | None]],
    consumers: int = 1,
) -> list[PipelineRunner]:
    """Build and start supervised consumer threads: ``consumers`` per pipeline, all of a
    pipeline's in one group (Kafka spreads the partitions over them)."""
    if consumers < 1:
        raise ValueError("the number of consumers must be at least 1")
    runners = [
        PipelineRunner(
            spec.name if consumers == 1 else f"{spec.name}#{i + 1}",
            functools.partial(build_consumer, settings, spec, opts),
            stall_seconds=settings.pipeline_stall_seconds,
        )
        for spec, opts in specs
        for i in range(consumers)
    ]
    for r in runners:
        r.start()
    return runners


def runner_checks(runners: list[PipelineRunner]) -> dict[str, Callable[[], str]]:
    """Health checks, one per pipeline, for :func:`clickflow.health.health_router`."""
    return {f"pipeline:{r.name}": r.health for r in runners}
