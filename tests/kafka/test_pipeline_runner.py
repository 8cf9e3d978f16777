"""Pipeline threads on the real broker: a consumer that dies is rebuilt and restarted with
backoff and counted; health turns red while it is down or stalled with records pending."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from prometheus_client import REGISTRY

from clickflow.config import Settings
from clickflow.kafka.batch import Batch, BatchTrigger, Delivery
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.dlq import DeadLetter
from clickflow.pipelines import PipelineRunner

from .test_batch_consumer import MemoryIntentLog, MemorySink, make_consumer, produce, records
from .test_handler_close import CLIENT_THREAD, native_threads


class FailingIntentLog(MemoryIntentLog):
    """``pending()`` (called from the assignment callback) fails the first ``fail_times``."""

    def __init__(self, fail_times: int) -> None:
        super().__init__()
        self.fail_times = fail_times

    def pending(self, group, topic, partition, from_offset):
        if self.fail_times > 0:
            self.fail_times -= 1
            raise ConnectionError("intent log unreachable")
        return super().pending(group, topic, partition, from_offset)


def restarts(name: str) -> float:
    return REGISTRY.get_sample_value("clickflow_pipeline_restarts_total", {"pipeline": name}) or 0


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_failing_assignment_callback_restarts_the_pipeline(
    settings: Settings, topic: str
) -> None:
    sink = MemorySink()
    intents = FailingIntentLog(fail_times=1)
    built: list[BatchConsumer] = []

    def build() -> BatchConsumer:
        c = make_consumer(
            settings,
            topic,
            sink,
            BatchTrigger(max_records=100, max_seconds=0.3),
            delivery=Delivery.EXACTLY_ONCE,
            intent_log=intents,
        )
        built.append(c)
        return c

    name = f"test-{topic}"
    before = restarts(name)
    produce(settings, topic, records(500))
    runner = PipelineRunner(name, build, stall_seconds=30, backoff_initial=1.5).start()
    try:
        # The first consumer dies in on_assign; while it waits to restart, health is red.
        wait_for(lambda: runner.restarts >= 1, 60, "the first consumer to die")
        assert "ConnectionError: intent log unreachable" in (runner.last_error or "")
        health = runner.health()
        assert health.startswith("restarting after: ConnectionError"), health
        assert restarts(name) == before + 1
        # The rebuilt consumer takes over and everything arrives.
        wait_for(lambda: sorted(set(sink.rows)) == list(range(500)), 60, "all records")
        assert len(built) == 2 and built[0] is not built[1]
        assert runner.thread.is_alive()
        assert runner.health() == "ok"
        assert runner.restarts == 1
    finally:
        runner.stop()
        runner.join(30)
    assert not runner.thread.is_alive()


class StuckSink(MemorySink):
    """A handler that hangs (a deadlock, a write that never returns) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def handle(self, batch: Batch) -> list[DeadLetter]:
        self.in_handle.set()
        self.release.wait()
        return super().handle(batch)


def test_health_is_red_when_records_wait_and_nothing_commits(
    settings: Settings, topic: str
) -> None:
    sink = StuckSink()
    consumer = make_consumer(settings, topic, sink, BatchTrigger(max_records=50, max_seconds=0.2))
    runner = PipelineRunner(f"test-{topic}", lambda: consumer, stall_seconds=1.5).start()
    try:
        wait_for(consumer.ready.is_set, 60, "the assignment")
        time.sleep(2.0)  # idle longer than the stall window: no work, so healthy
        assert runner.health() == "ok"
        produce(settings, topic, records(20))
        wait_for(sink.in_handle.is_set, 30, "the handler to be called")
        wait_for(lambda: runner.health() != "ok", 10, "health to turn red")
        assert runner.health().startswith("stalled: records pending"), runner.health()
        sink.release.set()
        wait_for(lambda: len(sink.rows) == 20, 30, "the batch to be written")
        wait_for(lambda: runner.health() == "ok", 10, "health to turn green again")
        assert runner.restarts == 0
    finally:
        sink.release.set()
        runner.stop()
        runner.join(30)


def test_serve_health_and_metrics_show_a_dying_pipeline(settings: Settings, topic: str) -> None:
    """`serve` passes its runners' checks to the query API: a pipeline that keeps dying turns
    /healthz red (naming it and why) and its restarts are counted in /metrics."""
    from fastapi.testclient import TestClient

    from clickflow.api.app import create_app
    from clickflow.pipelines import runner_checks

    def build() -> BatchConsumer:
        return make_consumer(
            settings,
            topic,
            MemorySink(),
            BatchTrigger(max_records=100, max_seconds=0.3),
            delivery=Delivery.EXACTLY_ONCE,
            intent_log=FailingIntentLog(fail_times=1),  # every new consumer fails once
        )

    name = f"test-{topic}"
    runner = PipelineRunner(name, build, backoff_initial=30).start()
    try:
        with TestClient(create_app(settings, checks=runner_checks([runner]))) as client:
            wait_for(lambda: runner.restarts >= 1, 60, "the consumer to die")
            r = client.get("/healthz")
            assert r.status_code == 503
            why = r.json()["dependencies"][f"pipeline:{name}"]
            assert why.startswith("restarting after: ConnectionError: intent log unreachable")
            metrics = client.get("/metrics").text
            assert f'clickflow_pipeline_restarts_total{{pipeline="{name}"}}' in metrics
            assert f'clickflow_pipeline_up{{pipeline="{name}"}} 0.0' in metrics
    finally:
        runner.stop()
        runner.join(30)
    assert not runner.thread.is_alive()


def _threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def test_restarts_leave_no_threads_of_old_consumers(
    settings: Settings, redis_url: str, topic: str
) -> None:
    """A consumer that dies has its handler and DLQ producer closed before the next one is
    built: after K restarts the threads of one consumer run, not of K + 1."""
    from clickflow.domains.pageviews.pipeline import PIPELINES as PAGEVIEWS
    from clickflow.kafka.topics import TopicSpec
    from clickflow.pipelines import PipelineOptions, build_consumer

    restarts_wanted = 3
    s = settings.model_copy(update={"redis_url": redis_url})
    intents = FailingIntentLog(fail_times=restarts_wanted)  # every consumer's assignment fails
    spec = dataclasses.replace(
        PAGEVIEWS[0], topics=[TopicSpec(topic, 2)], build_intent_log=lambda _s: intents
    )
    options = PipelineOptions(BatchTrigger(max_records=100, max_seconds=0.3), group=f"g-{topic}")
    ready: list[threading.Event] = []

    def build() -> BatchConsumer:
        """The pipeline as `clickflow process` builds it, once it has handled a batch: its
        handler's worker threads run."""
        consumer = build_consumer(s, spec, options)
        consumer.handler.handle(Batch(consumer.group, []))
        ready.append(consumer.ready)
        return consumer

    python_before = set(threading.enumerate())
    rdk_before = native_threads(CLIENT_THREAD)
    runner = PipelineRunner(f"test-{topic}", build, backoff_initial=0.05, backoff_max=0.2)
    one_handler = len(_threads("pageviews-"))  # the first consumer's, built by the runner
    assert one_handler > 0
    runner.start()
    try:
        wait_for(lambda: runner.restarts >= restarts_wanted, 120, "the consumers to die")
        wait_for(lambda: len(ready) > restarts_wanted and ready[-1].is_set(), 60, "the last one")
        assert runner.restarts == restarts_wanted
        # The handler threads of the consumer that runs, none of the ones that died.
        assert len(_threads("pageviews-")) == one_handler, _threads("pageviews-")
    finally:
        runner.stop()
        runner.join(30)
    assert not runner.thread.is_alive()
    left = [t.name for t in set(threading.enumerate()) - python_before if t.is_alive()]
    assert left == [], f"threads left running after stop: {left}"
    assert native_threads(CLIENT_THREAD) <= rdk_before, "librdkafka clients left after stop"


def test_pipeline_consumers_wait_longer_on_the_broker_and_still_answer_a_lone_record(
    settings: Settings, topic: str
) -> None:
    """Pipeline consumers let the broker hold an empty fetch for a second (half the broker's
    re-reads of an idle stack); a record sent to an idle pipeline still arrives at the next
    re-read, at most half a second later."""
    from clickflow.kafka.topics import TopicSpec
    from clickflow.pipelines import (
        PIPELINE_FETCH_WAIT_MS,
        PipelineOptions,
        PipelineSpec,
        build_consumer,
    )

    sink = MemorySink()
    spec = PipelineSpec(
        name=f"lone-{topic}",
        topics=[TopicSpec(topic, 4)],
        store="clickhouse",
        build_handler=lambda _settings, _opts: sink,
    )
    options = PipelineOptions(
        trigger=BatchTrigger(max_records=100, max_seconds=0.2), delivery=Delivery.AT_LEAST_ONCE
    )
    consumer = build_consumer(settings, spec, options)
    assert consumer.consumer_conf["fetch.wait.max.ms"] == PIPELINE_FETCH_WAIT_MS == 1000
    consumer.handler = sink  # the records themselves, not a traced wrapper
    t = threading.Thread(target=consumer.run, daemon=True)
    t.start()
    try:
        assert consumer.ready.wait(120), "no partitions assigned"
        time.sleep(3)  # idle: every fetch is held by the broker
        took = []
        for i in range(3):
            sent = time.monotonic()
            produce(settings, topic, records(1, start=i))
            while len(sink.rows) <= i and time.monotonic() - sent < 30:
                time.sleep(0.01)
            took.append(time.monotonic() - sent)
            time.sleep(1.3)
    finally:
        consumer.stop()
        t.join(timeout=60)
    assert sorted(sink.rows) == [0, 1, 2]
    # At most 0.5 s on the broker and 0.2 s in the batch; a loaded machine adds some (a
    # consumer that slept through a 5 s broker wait would still fail this).
    assert max(took) < 4.0, took
