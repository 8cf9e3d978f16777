"""Reading topics as an operator does: partitions, end offsets, group lags, records from a
point in time up to the end. Nothing here joins a consumer group or commits an offset.

End offsets are asked of the broker (``cached=False``): the embedded broker's cached high
watermark lags behind after multi-record batches.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from clickflow.config import Settings
from clickflow.kafka.config import consumer_config
from clickflow.kafka.exceptions import KafkaUnavailable


@dataclass(frozen=True, slots=True)
class PartitionRange:
    partition: int
    low: int  # first offset still stored
    high: int  # the next offset to be written


def browser(settings: Settings) -> Consumer:
    """A consumer for assign() and offset queries only: its group id is never joined."""
    return Consumer(
        consumer_config(
            settings,
            f"clickflow-browse-{uuid.uuid4().hex[:8]}",
            **{"enable.partition.eof": True, "queued.min.messages": 1000},
        )
    )


def list_topics(settings: Settings, timeout: float = 10.0) -> dict[str, int]:
    """Topic name -> partition count (internal topics left out)."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 3})
    try:
        meta = admin.list_topics(timeout=timeout)
    except KafkaException as e:
        raise KafkaUnavailable(f"Kafka at {settings.kafka_bootstrap} is unreachable: {e}") from e
    return {
        name: len(t.partitions)
        for name, t in sorted(meta.topics.items())
        if not name.startswith("__") and t.error is None
    }


def partition_ranges(consumer: Consumer, topic: str, timeout: float = 10.0) -> list[PartitionRange]:
    """The stored offset range of each partition of ``topic`` ([] if it does not exist).

    The embedded broker answers ListOffsets (latest) with the base offset of the last record
    batch plus one, not the end, and ignores timestamps: the end is read from a fetch
    instead, started at that approximate end (the high watermark of a fetch is right)."""
    meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        return []
    lows: dict[int, int] = {}
    starts = []
    for p in sorted(meta.partitions):
        low, approx_high = consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=timeout, cached=False
        )
        lows[p] = max(low, 0)
        starts.append(TopicPartition(topic, p, max(lows[p], approx_high - 1)))
    consumer.assign(starts)
    highs: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(highs) < len(lows):
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"no end offsets for {topic} within {timeout}s")
            for m in consumer.consume(num_messages=1000, timeout=0.2):
                err = m.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    highs[m.partition()] = m.offset()
    finally:
        consumer.unassign()
    return [PartitionRange(p, lows[p], highs[p]) for p in sorted(lows)]


def records_since(messages: Iterator[Message], since_ms: int | None) -> Iterator[Message]:
    """Records written at or after ``since_ms`` (the embedded broker has no time index)."""
    for m in messages:
        if since_ms is None or m.timestamp()[1] >= since_ms:
            yield m


def committed_offsets(
    settings: Settings, group: str, topic: str, partitions: list[int]
) -> dict[int, int]:
    """A group's committed offsets (-1: none yet), asked without joining the group."""
    consumer = Consumer(consumer_config(settings, group))
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def groups_committed(
    admin: AdminClient, groups: list[str], topic: str, partitions: list[int]
) -> dict[str, dict[int, int]]:
    """Each group's committed offsets of ``topic`` (-1: none yet), asked through one admin
    client with every request in flight at once: a consumer per group cost a connection and
    ~0.1 s each, minutes on a broker that has seen a few hundred groups."""
    if not groups:
        return {}
    tps = [TopicPartition(topic, p) for p in partitions]
    futures = {
        group: next(
            iter(
                admin.list_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(group, tps)], request_timeout=10
                ).values()
            )
        )
        for group in groups
    }
    found: dict[str, dict[int, int]] = {}
    for group, future in futures.items():
        try:
            answer = future.result(timeout=30)
        except Exception:  # a group the broker cannot answer for: no lag shown for it
            continue
        found[group] = {tp.partition: tp.offset for tp in answer.topic_partitions}
    return found


def read_records(
    consumer: Consumer,
    topic: str,
    start: dict[int, int],
    end: dict[int, int],
    on_record: Callable[[int], None] | None = None,
    idle_timeout: float = 10.0,
) -> Iterator[Message]:
    """The records of each partition from ``start`` up to (not including) ``end``.

    Stops early only when nothing arrives for ``idle_timeout`` seconds (records deleted by
    retention, or a broker that went away)."""
    todo = {p: e for p, e in end.items() if start.get(p, e) < e}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, start[p]) for p in todo])
    last_progress = time.monotonic()
    while todo:
        msgs = consumer.consume(num_messages=500, timeout=0.5)
        if not msgs and time.monotonic() - last_progress > idle_timeout:
            return
        for m in msgs:
            if m.error() is not None:
                continue
            p = m.partition()
            if p not in todo or m.offset() >= todo[p]:
                continue
            last_progress = time.monotonic()
            if on_record is not None:
                on_record(p)
            yield m
            if m.offset() >= todo[p] - 1:
                del todo[p]
    consumer.unassign()


def follow(consumer: Consumer, topic: str, start: dict[int, int]) -> Iterator[Message]:
    """Every record from ``start`` on, forever (until the caller stops iterating)."""
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    while True:
        for m in consumer.consume(num_messages=500, timeout=0.5):
            if m.error() is None:
                yield m


def header(message: Message, name: str) -> bytes | None:
    """The last value of header ``name`` (None if absent)."""
    found = None
    for key, value in message.headers() or []:
        if key == name:
            found = value
    return found
