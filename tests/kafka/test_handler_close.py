"""Stopping a consumer releases what it owns: every domain's handler is closed (its worker
threads end, its connections close) and so is the DLQ producer (librdkafka's threads end).

Each pipeline runs as `clickflow process` builds it (``build_consumer``), on a topic and a
group of its own, until it has handled a batch of valid and broken records: its handler's
threads are then running. After ``stop()`` and the end of ``run()``, no thread started since
may be left, Python or librdkafka, nor a connection of the handler to PostgreSQL."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from clickflow.config import Settings
from clickflow.generator.registry import factory_for
from clickflow.kafka.batch import BatchTrigger
from clickflow.kafka.config import producer_config
from clickflow.kafka.consumer import BatchConsumer
from clickflow.kafka.producer import EventProducer
from clickflow.kafka.topics import TopicSpec
from clickflow.migrations import migrate_clickhouse, migrate_postgres
from clickflow.pipelines import PipelineOptions, PipelineSpec, all_pipelines, build_consumer

TRIGGER = BatchTrigger(max_records=50, max_seconds=0.3)


def _on_topic(name: str) -> Callable[[str], PipelineSpec]:
    """The pipeline as shipped, reading ``topic`` (its handler does not depend on it)."""
    return lambda topic: dataclasses.replace(all_pipelines()[name], topics=[TopicSpec(topic, 2)])


def _adclicks(topic: str) -> PipelineSpec:
    from clickflow.domains.adclicks.config import AdClicksConfig
    from clickflow.domains.adclicks.pipeline import pipeline_spec

    return pipeline_spec(AdClicksConfig(topic=topic, partitions=2))


def _ugc(topic: str) -> PipelineSpec:
    from clickflow.domains.ugc.config import UgcConfig
    from clickflow.domains.ugc.pipeline import UgcHandler

    # The shipped handler (background sweep included) on this topic and its own Redis keys.
    config = UgcConfig(topic=topic, partitions=2, redis_prefix=f"ugc{uuid.uuid4().hex[:8]}:")
    return dataclasses.replace(
        all_pipelines()["ugc"],
        topics=[TopicSpec(topic, 2)],
        build_handler=lambda settings, _opts: UgcHandler(settings, config),
    )


#: pipeline -> (its domain, the pipeline on a given topic)
PIPELINES: dict[str, tuple[str, Callable[[str], PipelineSpec]]] = {
    "pageviews": ("pageviews", _on_topic("pageviews")),
    "adclicks": ("adclicks", _adclicks),
    "ugc": ("ugc", _ugc),
    "telecom-ingest": ("telecom", _on_topic("telecom-ingest")),
    "telecom-aggregate": ("telecom", _on_topic("telecom-aggregate")),
}


def native_threads(prefix: str) -> set[int]:
    """This process's threads whose OS name starts with ``prefix`` (librdkafka: "rdk:")."""
    out = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().startswith(prefix):
                out.add(int(task.name))
        except OSError:  # ended meanwhile
            pass
    return out


#: The one thread every librdkafka client (consumer, producer, admin) runs while it lives.
#: Counting these, not every "rdk:" thread, finds clients left open; a client that existed
#: before (a kept health-probe admin client, say) may add a broker thread at any time.
CLIENT_THREAD = "rdk:main"


def thread_names(tids: set[int]) -> str:
    """ "librdkafka threads left after stop" with their names (which client they belong to)."""
    names = []
    for tid in sorted(tids):
        try:
            names.append(Path(f"/proc/self/task/{tid}/comm").read_text().strip())
        except OSError:
            names.append(f"{tid} (ended)")
    return f"librdkafka clients left after stop: {names}"


def pg_backends(settings: Settings) -> int:
    """Client connections to the PostgreSQL database, but the one asking."""
    assert settings.postgres_url
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def send(settings: Settings, domain: str, topic: str) -> int:
    """Valid and broken records of the domain; returns how many."""
    factory = factory_for(domain)
    rng, now = random.Random(7), time.time()
    events = [factory.valid(rng, now) for _ in range(40)]
    events += [factory.broken(rng, now, b) for b in factory.breakages[:5]]
    producer = EventProducer(producer_config(settings))
    for e in events:
        producer.send(topic, e.value, key=e.key)
    assert producer.flush(30) == 0
    return len(events)


@pytest.mark.parametrize("name", list(PIPELINES))
def test_stopping_a_consumer_leaves_no_handler_threads(
    settings_full: Settings, topic: str, name: str
) -> None:
    domain, spec_on = PIPELINES[name]
    spec = spec_on(topic)
    if spec.store == "clickhouse":
        migrate_clickhouse(settings_full, [domain])
    else:
        migrate_postgres(settings_full, [domain])
    python_before = set(threading.enumerate())
    rdk_before = native_threads(CLIENT_THREAD)
    pg_before = pg_backends(settings_full)
    options = PipelineOptions(TRIGGER, spec.default_options.delivery, f"g-{topic}")
    consumer: BatchConsumer = build_consumer(settings_full, spec, options)  # creates the topics
    n = send(settings_full, domain, topic)
    thread = threading.Thread(target=consumer.run, name=f"consumer-{name}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while consumer.stats.records < n or consumer.stats.batches < 1:
            assert time.monotonic() < deadline, f"{name} handled {consumer.stats.records}/{n}"
            assert thread.is_alive(), "the consumer died"
            time.sleep(0.05)
    finally:
        consumer.stop()
        thread.join(60)
    assert not thread.is_alive(), "the consumer did not stop"
    left = [t.name for t in set(threading.enumerate()) - python_before if t.is_alive()]
    assert left == [], f"{name}: threads left running after stop: {left}"
    # The DLQ producer's (and the Kafka consumer's) librdkafka threads.
    left_clients = native_threads(CLIENT_THREAD) - rdk_before
    assert not left_clients, thread_names(left_clients)
    # A closed connection's server process ends a moment after the client closed it.
    deadline = time.monotonic() + 10
    while pg_backends(settings_full) > pg_before:
        assert time.monotonic() < deadline, "PostgreSQL connections left after stop"
        time.sleep(0.05)
