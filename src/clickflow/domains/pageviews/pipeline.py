"""The page-view pipeline: validate, drop duplicates, insert raw rows; ClickHouse's
materialized views fill the minute rollup, and the hour rollup from the minute states.

Exactly once, through crashes:

* each partition's offset range (a chunk) is inserted with a deterministic deduplication
  token; the consumer framework's intent log replays the same ranges after a crash, so a
  re-insert is dropped by ClickHouse, in the raw table and in both rollups;
* re-sent duplicates (same event identity, possibly on another partition) are dropped before
  the insert by claiming each identity in Redis with the record's own Kafka coordinates
  (``topic/partition/offset``). A replay of the same record finds its own claim and keeps the
  record; a true duplicate finds another record's claim and is dropped. The claim is atomic
  (one Lua script per batch), so parallel consumers cannot both keep a duplicate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from itertools import chain

import msgspec
import orjson
from confluent_kafka import Message
from prometheus_client import Counter

from clickflow.config import Settings
from clickflow.domains.pageviews.config import pageviews_config
from clickflow.domains.pageviews.events import (
    PAGEVIEWS_TOPIC,
    InvalidEvent,
    decode_page_view,
    event_identity,
)
from clickflow.exactly_once.claims import DayBucketClaims
from clickflow.exactly_once.insert import insert_chunk
from clickflow.exactly_once.intent_log import ClickHouseIntentLog
from clickflow.kafka.batch import Batch
from clickflow.kafka.dlq import DeadLetter
from clickflow.kafka.topics import TopicSpec
from clickflow.pipelines import PipelineOptions, PipelineSpec
from clickflow.stores.clickhouse import clickhouse_client
from clickflow.stores.redis import redis_client

log = logging.getLogger("clickflow.pageviews")

DUPLICATES = Counter("clickflow_pageviews_duplicates_dropped", "Re-sent page views dropped")
INVALID = Counter("clickflow_pageviews_invalid", "Invalid page-view records (DLQ)")
STORED = Counter("clickflow_pageviews_stored", "Page views inserted into page_views_raw")

RAW_COLUMNS = [
    "event_time",
    "page_id",
    "user_id",
    "duration_ms",
    "user_agent",
    "ip_address",
    "region",
    "is_bounce",
    "event_id",
    "kafka_offset",
    "kafka_partition",
]
ERROR_COLUMNS = ["error_time", "raw_message", "error_reason", "kafka_offset", "kafka_partition"]


class PageViewWriters:
    """The writer threads of a page-view handler: Redis claims, ClickHouse inserts, intent
    records, one thread each.

    The consumers of the pipeline in one process (``--consumers N``, threads of ``serve``)
    share one set (:func:`shared_writers`): the same store work then runs on the same three
    threads as with one consumer. With a set per consumer, two consumers ran six writer
    threads and two chDB inserts at a time beside two decoding threads on the one GIL:
    more voluntary context switches per event in every interleaved pair (median 41 against
    33 per 1,000; CPU per event within the noise, docs/design.md, "Several consumers per
    pipeline"), for no parallelism two cores had left. A handler's tasks keep their order
    on each thread (FIFO), which is all its batches rely on; a consumer's batch may wait
    behind another consumer's, never on it (inserts wait on intents and claims, which wait
    on nothing).

    Shared sets are counted: the last handler to close one ends its threads, so consumers
    that stopped (or a pipeline restarted after a crash) leave none behind."""

    def __init__(self, key: tuple[str, str, str | None] | None = None) -> None:
        self.key = key  # where shared_writers() keeps it; None: one handler's own
        self.users = 0
        self.claimer = ThreadPoolExecutor(1, thread_name_prefix="pageviews-claims")
        self.inserter = ThreadPoolExecutor(1, thread_name_prefix="pageviews-insert")
        # The intent record (a small insert of its own, ~4 ms) runs beside the claims of
        # its batch instead of queueing behind the previous batch's inserts.
        self.recorder = ThreadPoolExecutor(1, thread_name_prefix="pageviews-intent")

    def release(self) -> None:
        """A handler is done with these threads: end them once no handler uses them (after
        their queued work)."""
        if self.key is not None:
            with _shared_lock:
                self.users -= 1
                if self.users > 0:
                    return
                if _shared.get(self.key) is self:
                    del _shared[self.key]
        for pool in (self.recorder, self.claimer, self.inserter):
            pool.shutdown(wait=True)


_shared: dict[tuple[str, str, str | None], PageViewWriters] = {}
_shared_lock = threading.Lock()


def shared_writers(settings: Settings) -> PageViewWriters:
    """The writer threads every page-view handler of this process shares with the others
    writing to the same stores (created by the first)."""
    key = (settings.clickhouse_url, settings.clickhouse_database, settings.redis_url)
    with _shared_lock:
        writers = _shared.get(key)
        if writers is None:
            writers = _shared[key] = PageViewWriters(key)
        writers.users += 1
        return writers


def pipeline_handler(settings: Settings, _options: object = None) -> PageViewHandler:
    """The pipeline's handler, on the process's shared writer threads."""
    return PageViewHandler(settings, writers=shared_writers(settings))


class PageViewHandler:
    """Validate, claim identities in Redis, insert into ClickHouse, as a pipeline.

    The consumer's thread decodes a chunk in pieces of ``PIECE`` records; a Redis thread
    claims the identities of each piece while the next one is decoded, and a ClickHouse
    thread inserts each chunk (one insert, one deduplication token) while the next chunk,
    or the next batch (a :class:`~clickflow.kafka.batch.PipelinedBatchHandler`), is
    decoded; a third thread records the batch's intent (exactly-once), which every insert
    of the batch waits for. chDB and redis-py release the GIL while they work. Each chunk's
    claims and insert are exactly what a sequential run would do, so a failure anywhere fails
    the whole batch and its replay is deduplicated as usual.
    """

    PIECE = 2000

    def __init__(
        self,
        settings: Settings,
        dedup_ttl_s: int = 7 * 24 * 3600,
        writers: PageViewWriters | None = None,
    ) -> None:
        self.settings = settings
        self.claims = DayBucketClaims(settings, "pv:claims:", dedup_ttl_s)
        writers = writers or PageViewWriters()
        self._writers: PageViewWriters | None = writers
        self._claimer = writers.claimer
        self._inserter = writers.inserter
        self._recorder = writers.recorder

    def handle(self, batch: Batch) -> list[DeadLetter]:
        return self.submit(batch).result()

    def close(self) -> None:
        """End the worker threads once their queued work is done (the consumer framework
        calls it when the consumer stops or dies: a rebuilt handler has threads of its own).
        Shared writer threads (:func:`shared_writers`) end with the last handler using them."""
        writers, self._writers = self._writers, None
        if writers is not None:
            writers.release()

    def submit(
        self, batch: Batch, before_write: Callable[[Batch], None] | None = None
    ) -> Future[list[DeadLetter]]:
        """Decode the batch here; its claims and inserts run on the two worker threads. The
        future is done when every chunk is in ClickHouse (the consumer framework then
        commits): meanwhile the framework reads and decodes the next batch."""
        now = time.time()
        letters: list[DeadLetter] = []
        # Every insert of this batch waits for it: nothing is written unless it succeeded.
        intent = self._recorder.submit(before_write or _nothing, batch)
        inserts: list[Future[None]] = [intent]
        try:
            for chunk in batch.chunks:
                owner = f"{chunk.topic}/{chunk.partition}/"
                claimed: list[Future[list[bytes]]] = []
                errors: list[bytes] = []
                for start in range(0, len(chunk.messages), self.PIECE):
                    piece = chunk.messages[start : start + self.PIECE]
                    decoded = self._decode(piece, owner, now, letters, errors)
                    claimed.append(self._claimer.submit(self._drop_duplicates, *decoded))
                token = chunk.token(batch.group)
                inserts.append(self._inserter.submit(self._insert, intent, token, claimed, errors))
        except BaseException:
            # Nothing may still be writing when the framework retries the batch.
            wait(inserts)
            raise
        if letters:
            INVALID.inc(len(letters))

        def written() -> list[DeadLetter]:
            wait(inserts)  # every chunk, even after a failure, before the batch is retried
            for done in inserts:
                done.result()  # re-raises the first sink failure
            return letters

        # Queued behind this batch's inserts on the same (FIFO, single) thread.
        return self._inserter.submit(written)

    def _decode(
        self,
        messages: list[Message],
        owner: str,
        now: float,
        letters: list[DeadLetter],
        errors: list[bytes],
    ) -> tuple[list[int], list[str], list[bytes]]:
        """Valid records as three lists in step: event days, claim lines and rows; the rest
        become dead letters and error rows. ``owner`` is "topic/partition/": a claim line is
        "identity owner\\n", the record's identity claimed by its own Kafka coordinates.
        Three flat lists rather than a tuple per record: the claims thread passes them on as
        they are, and no container per record is left for the cyclic collector to rescan."""
        days: list[int] = []
        lines: list[str] = []
        rows: list[bytes] = []
        # The hot loop of the pipeline (~4 us per record): names bound locally.
        decode, identity_of, dumps = decode_page_view, event_identity, _ROW_ENCODER.encode
        stamp = Message.timestamp
        day_of, line_of, keep = days.append, lines.append, rows.append
        partition = messages[0].partition() if messages else 0
        for m in messages:
            raw = m.value() or b""
            # Verdicts such as "in the future" are taken against the time the record reached
            # Kafka, not the time it is processed: a replay reaches the same verdict.
            kafka_ms = stamp(m)[1]
            try:
                ev, ts = decode(raw, kafka_ms * 0.001 if kafka_ms > 0 else now)
            except InvalidEvent as e:
                reason = str(e)
                letters.append(DeadLetter(m, reason))
                errors.append(_error_row(raw, reason, m, now))
                continue
            identity = identity_of(raw)
            offset = m.offset()
            row = dumps(
                [  # RAW_COLUMNS, in order (JSONCompactEachRow)
                    ts,
                    ev.page_id,
                    ev.user_id,
                    ev.view_duration_ms,
                    ev.user_agent,
                    ev.ip_address or "::",
                    ev.region,
                    1 if ev.is_bounce else 0,
                    identity,
                    offset,
                    partition,
                ]
            )
            day_of(int(ts // 86400))
            line_of(f"{identity} {owner}{offset}\n")
            keep(row)
        return days, lines, rows

    def _drop_duplicates(self, days: list[int], lines: list[str], rows: list[bytes]) -> list[bytes]:
        """The rows whose identity their own record owns."""
        dup_index = self.claims.duplicate_lines(days, lines)
        if not dup_index:
            return rows
        DUPLICATES.inc(len(dup_index))
        return [row for i, row in enumerate(rows) if i not in dup_index]

    def _insert(
        self,
        intent: Future[None],
        token: str,
        claimed: list[Future[list[bytes]]],
        errors: list[bytes],
    ) -> None:
        intent.result()  # raises if the intent was not recorded: write nothing
        client = clickhouse_client(self.settings)
        # The chunk's error rows first: once a record of the chunk is queryable, so are the
        # dead letters of the records before it (what a reader waiting for a later record
        # expects; the other way round they could still be missing).
        if errors:
            insert_chunk(
                client,
                "processing_errors",
                b"\n".join(errors),
                f"{token}:errors",
                columns=ERROR_COLUMNS,
                fmt="JSONEachRow",
                rollups=False,
            )
        good = list(chain.from_iterable(piece.result() for piece in claimed))
        if good:
            insert_chunk(client, "page_views_raw", b"\n".join(good), token, columns=RAW_COLUMNS)
            STORED.inc(len(good))


# The rows' JSON: msgspec's encoder writes the same bytes as orjson.dumps (compared on
# 200,000 random rows), without orjson's fresh output buffer of a kilobyte or more per call.
_ROW_ENCODER = msgspec.json.Encoder()


def _nothing(_batch: Batch) -> None:
    pass


def stores_healthy(settings: Settings) -> None:
    """Raises when ClickHouse or Redis (the claims) does not answer."""
    clickhouse_client(settings).command("SELECT 1")
    redis_client(settings).ping()


def _error_row(raw: bytes, reason: str, m: Message, now: float) -> bytes:
    return orjson.dumps(
        {
            "error_time": int(now),
            "raw_message": raw.decode("utf-8", errors="replace"),
            "error_reason": reason,
            "kafka_offset": m.offset(),
            "kafka_partition": m.partition(),
        }
    )


def _default_options() -> PipelineOptions:
    config = pageviews_config()
    return PipelineOptions(config.trigger(), config.delivery)


PIPELINES = [
    PipelineSpec(
        name="pageviews",
        topics=[TopicSpec(PAGEVIEWS_TOPIC, 4)],
        store="clickhouse",
        build_handler=pipeline_handler,
        build_intent_log=lambda settings: ClickHouseIntentLog(settings),
        default_options=_default_options(),
        health_check=stores_healthy,
    )
]
