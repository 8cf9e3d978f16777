"""The contract between the consumer framework and the pipelines that run on it.

A pipeline imports from here: what a batch and its per-partition chunks are, when a batch is
handed over (:class:`BatchTrigger`), the delivery guarantee, and the handler protocols it
implements. The loop that drives them is :mod:`clickflow.kafka.consumer`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from confluent_kafka import Message

from clickflow.kafka.dlq import DeadLetter


class Delivery(StrEnum):
    AT_LEAST_ONCE = "at-least-once"
    EXACTLY_ONCE = "exactly-once"


@dataclass(frozen=True)
class BatchTrigger:
    """When to hand a batch over: ``max_records`` and/or ``max_seconds`` (first one wins).

    Whatever the mode, a batch is also handed over when the records held in memory reach
    ``max_buffer_records`` or ``max_buffer_bytes`` (values only): time-only batching at a
    high rate would otherwise grow until the timer fires, and so would its replay."""

    max_records: int | None = 1000
    max_seconds: float | None = 1.0
    max_buffer_records: int = 500_000
    max_buffer_bytes: int = 128 * 1024 * 1024
    #: Sparse traffic: when ``max_seconds`` is up and the batch holds fewer than
    #: ``sparse_records`` records, it waits for that many, at most ``sparse_seconds`` after
    #: the last batch. A batch costs a store a fixed price whatever its size (ClickHouse:
    #: one insert per chunk and table, ~9 ms of CPU each, its intent record, parts merged
    #: again), so a trickle cut every second costs nearly what a full stream does. At a
    #: rate of ``sparse_records`` a second or more, batches are cut as before. Off (None)
    #: unless a pipeline asks for it.
    sparse_records: int = 0
    sparse_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_records is None and self.max_seconds is None:
            raise ValueError("a batch trigger needs max_records, max_seconds or both")
        if self.sparse_seconds is not None and (
            self.max_seconds is None
            or self.sparse_seconds < self.max_seconds
            or self.sparse_records < 1
        ):
            raise ValueError(
                "sparse_seconds needs max_seconds (at most sparse_seconds) and sparse_records >= 1"
            )
        if self.max_records is not None and not 1 <= self.max_records <= 1_000_000:
            raise ValueError("max_records must be between 1 and 1,000,000")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError("max_seconds must be positive")
        if self.max_buffer_records < 1 or self.max_buffer_bytes < 1:
            raise ValueError("max_buffer_records and max_buffer_bytes must be positive")

    def seconds_for(self, records: int) -> float | None:
        """How long after the last batch one holding ``records`` records is cut by time."""
        if self.sparse_seconds is not None and records < self.sparse_records:
            return self.sparse_seconds
        return self.max_seconds

    @property
    def record_cap(self) -> int:
        """Records held in memory before a batch is handed over, whatever the mode."""
        return max(self.max_buffer_records, self.max_records or 0)

    @classmethod
    def from_mode(cls, mode: str, records: int = 1000, seconds: float = 1.0) -> BatchTrigger:
        """``count`` (N records), ``time`` (every X s) or ``hybrid`` (whichever first)."""
        if mode == "count":
            return cls(max_records=records, max_seconds=None)
        if mode == "time":
            return cls(max_records=None, max_seconds=seconds)
        if mode == "hybrid":
            return cls(max_records=records, max_seconds=seconds)
        raise ValueError(f"unknown batch mode {mode!r}: use count, time or hybrid")


@dataclass(slots=True)
class Chunk:
    """The records of one partition in a batch: a contiguous offset range."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    messages: list[Message]
    #: The consumer's ownership epoch of the partition when the chunk was cut: the chunk is
    #: written only while the consumer still owns the partition in that same epoch.
    epoch: int = 0

    def token(self, group: str, suffix: str = "") -> str:
        """Deterministic insert-deduplication token for this offset range and its records.

        The fingerprint (timestamps of the first and last record, CRC of the first value)
        is the same when the range is replayed (Kafka records are immutable), and differs
        for new records at reused offsets: a broker that lost its log (the embedded,
        in-memory one after a restart) counts offsets from 0 again, and without it their
        inserts would be dropped as duplicates of old blocks."""
        t = f"{group}:{self.topic}:{self.partition}:{self.first_offset}-{self.last_offset}"
        if self.messages:
            first, last = self.messages[0], self.messages[-1]
            stamps = b"%d/%d/" % (first.timestamp()[1], last.timestamp()[1])
            t = f"{t}:{zlib.crc32(stamps + (first.value() or b'')):08x}"
        return f"{t}:{suffix}" if suffix else t


@dataclass(slots=True)
class Batch:
    group: str
    chunks: list[Chunk]

    def __len__(self) -> int:
        return sum(len(c.messages) for c in self.chunks)

    def messages(self) -> Iterator[Message]:
        for c in self.chunks:
            yield from c.messages


class BatchHandler(Protocol):
    """What a pipeline implements.

    ``handle`` validates and writes a batch. Record-level problems (bad JSON, failed
    validation) must come back as dead letters; raising means "the sink failed" and the whole
    batch is retried later, so writes must be idempotent per chunk in exactly-once mode
    (use ``chunk.token(batch.group)`` as the insert deduplication token).

    A handler that holds threads or connections also has ``close()``: the consumer that owns
    it calls it once when its run ends (stopped or dead), so it never runs again.
    """

    def handle(self, batch: Batch) -> list[DeadLetter]: ...


class PipelinedBatchHandler(BatchHandler, Protocol):
    """A handler that can write one batch while the framework prepares the next.

    ``submit`` validates the batch, starts its writes and returns a future of its dead
    letters. It must call ``before_write(batch)`` (exactly-once: records the intent) and let
    it succeed before any write of the batch, typically as the first task of its writer
    thread. The framework commits the batch's offsets only once the future succeeds, in
    batch order, and keeps at most ``BatchConsumer.max_in_flight`` batches unfinished. A
    failed future is retried synchronously with ``handle``, so writes must be idempotent
    per chunk (the same rule as for retries)."""

    def submit(
        self, batch: Batch, before_write: Callable[[Batch], None]
    ) -> Future[list[DeadLetter]]: ...


class IntentLog(Protocol):
    """Durable record of the offset ranges about to be written (exactly-once mode).

    Every record carries the epoch of the partition's owner that wrote it (``Chunk.epoch``);
    epochs grow with each new owner of a partition (:meth:`claim`)."""

    def claim(self, group: str, partitions: list[tuple[str, int]], proposed: int) -> int:
        """A new owner of ``partitions``: returns its epoch, ``proposed`` or more, above every
        epoch recorded for them so far."""
        ...

    def record(self, group: str, chunks: list[Chunk]) -> None:
        """Record the chunks' ranges; raises :class:`~clickflow.kafka.exceptions.Fenced`
        when a later owner has claimed one of their partitions (nothing may be written)."""
        ...

    def pending(
        self, group: str, topic: str, partition: int, from_offset: int
    ) -> list[tuple[int, int]]:
        """Recorded ranges ending at or after ``from_offset``, non-overlapping, in offset
        order; where ranges overlap, the latest owner's win."""
        ...

    def forget_committed(self, group: str, committed: dict[tuple[str, int], int]) -> None:
        """Let ranges below the committed offsets expire (after the log's lifetime)."""
        ...
