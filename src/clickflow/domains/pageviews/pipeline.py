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
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

import orjson
from confluent_kafka import Message
from prometheus_client import Counter

from clickflow.config import Settings
from clickflow.domains.pageviews.events import (
    PAGEVIEWS_TOPIC,
    InvalidEvent,
    decode_page_view,
    event_identity,
)
from clickflow.kafka.consumer import Batch, BatchTrigger, Delivery
from clickflow.kafka.dlq import DeadLetter
from clickflow.kafka.topics import TopicSpec
from clickflow.pipelines import PipelineOptions, PipelineSpec
from clickflow.stores.clickhouse import (
    PIPELINE_INSERT_SETTINGS,
    ClickHouseIntentLog,
    clickhouse_client,
)
from clickflow.stores.redis import DayBucketClaims

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


class DecodedPiece(NamedTuple):
    """A piece of a chunk, decoded: the valid records as parallel lists (their event day,
    their claim line, their raw-table row) and the invalid ones (their index in the piece
    with the DLQ reason, and their ``processing_errors`` rows)."""

    days: list[int]
    lines: list[str]
    rows: list[bytes]
    invalid: list[tuple[int, str]]
    error_rows: list[bytes]


def decode_piece(
    values: list[bytes], offsets: list[int], partition: int, owner: str, now: float
) -> DecodedPiece:
    """Validate and encode one piece of a chunk. A pure function of its arguments, so it
    can run in a worker process. ``owner`` is "topic/partition/": a claim line is
    "identity owner\\n", the record's identity claimed by its own Kafka coordinates."""
    days: list[int] = []
    lines: list[str] = []
    rows: list[bytes] = []
    invalid: list[tuple[int, str]] = []
    error_rows: list[bytes] = []
    # The hot loop of the pipeline (~4 us per record): names bound locally.
    decode, identity_of, dumps = decode_page_view, event_identity, orjson.dumps
    for i, raw in enumerate(values):
        try:
            ev, ts = decode(raw, now)
        except InvalidEvent as e:
            reason = str(e)
            invalid.append((i, reason))
            error_rows.append(_error_row(raw, reason, offsets[i], partition, now))
            continue
        identity = identity_of(raw)
        offset = offsets[i]
        rows.append(
            dumps(
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
        )
        days.append(int(ts // 86400))
        lines.append(f"{identity} {owner}{offset}\n")
    return DecodedPiece(days, lines, rows, invalid, error_rows)


class PageViewHandler:
    """Validate, claim identities in Redis, insert into ClickHouse, as a pipeline.

    Records are decoded in pieces of ``PIECE`` in a worker process (``decode_processes``;
    0 decodes on the consumer's thread). Decoding is the pipeline's heaviest Python work:
    in the consumer's process it held the GIL that the consumer, claim and insert threads
    all need, and capped the pipeline near 100k events/s on two cores. A Redis thread claims
    the identities of each piece, and a ClickHouse thread inserts each chunk (one insert,
    one deduplication token) while the next batch is read and decoded (a
    :class:`~clickflow.kafka.consumer.PipelinedBatchHandler`); a third thread records the
    batch's intent (exactly-once), which every insert of the batch waits for. chDB and
    redis-py release the GIL while they work. Each chunk's claims and insert are exactly
    what a sequential run would do, so a failure anywhere fails the whole batch and its
    replay is deduplicated as usual.
    """

    PIECE = 2000

    def __init__(
        self, settings: Settings, dedup_ttl_s: int = 7 * 24 * 3600, decode_processes: int = 1
    ) -> None:
        self.settings = settings
        self.claims = DayBucketClaims(settings, "pv:claims:", dedup_ttl_s)
        self.decode_processes = decode_processes
        self._decoder: ProcessPoolExecutor | None = None
        self._claimer = ThreadPoolExecutor(1, thread_name_prefix="pageviews-claims")
        self._inserter = ThreadPoolExecutor(1, thread_name_prefix="pageviews-insert")
        # The intent record (a small insert of its own, ~4 ms) runs beside the claims of
        # its batch instead of queueing behind the previous batch's inserts.
        self._recorder = ThreadPoolExecutor(1, thread_name_prefix="pageviews-intent")

    def handle(self, batch: Batch) -> list[DeadLetter]:
        return self.submit(batch).result()

    def close(self) -> None:
        """Stop the decoder process (a later batch starts a new one)."""
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            decoder.shutdown(wait=True, cancel_futures=True)

    def submit(
        self, batch: Batch, before_write: Callable[[Batch], None] | None = None
    ) -> Future[list[DeadLetter]]:
        """Start the batch's decoding, claims and inserts. The future is done when every
        chunk is in ClickHouse (the consumer framework then commits): meanwhile the
        framework reads the next batch."""
        now = time.time()
        # Every insert of this batch waits for it: nothing is written unless it succeeded.
        intent = self._recorder.submit(before_write or _nothing, batch)
        inserts: list[Future[None]] = [intent]
        pieces: list[tuple[list[Message], Future[DecodedPiece]]] = []
        try:
            for chunk in batch.chunks:
                owner = f"{chunk.topic}/{chunk.partition}/"
                decoded: list[Future[DecodedPiece]] = []
                claimed: list[Future[list[bytes]]] = []
                for start in range(0, len(chunk.messages), self.PIECE):
                    piece = chunk.messages[start : start + self.PIECE]
                    piece_decoded = self._decode(piece, chunk.partition, owner, now)
                    pieces.append((piece, piece_decoded))
                    decoded.append(piece_decoded)
                    claimed.append(self._claimer.submit(self._drop_duplicates, piece_decoded))
                token = chunk.token(batch.group)
                inserts.append(self._inserter.submit(self._insert, intent, token, claimed, decoded))
        except BaseException:
            # Nothing may still be writing when the framework retries the batch.
            wait(inserts + [d for _, d in pieces])
            raise

        def written() -> list[DeadLetter]:
            wait(inserts)  # every chunk, even after a failure, before the batch is retried
            for done in inserts:
                done.result()  # re-raises the first failure
            letters = [
                DeadLetter(piece[i], reason)
                for piece, decoded in pieces
                for i, reason in decoded.result().invalid
            ]
            if letters:
                INVALID.inc(len(letters))
            return letters

        # Queued behind this batch's inserts on the same (FIFO, single) thread.
        return self._inserter.submit(written)

    def _decode(
        self, piece: list[Message], partition: int, owner: str, now: float
    ) -> Future[DecodedPiece]:
        values = [m.value() or b"" for m in piece]
        offsets = [m.offset() for m in piece]
        if self.decode_processes <= 0:
            done: Future[DecodedPiece] = Future()
            done.set_result(decode_piece(values, offsets, partition, owner, now))
            return done
        try:
            return self._decoder_pool().submit(decode_piece, values, offsets, partition, owner, now)
        except BrokenProcessPool:  # the worker died (killed?): start a new one, once
            self.close()
            return self._decoder_pool().submit(decode_piece, values, offsets, partition, owner, now)

    def _decoder_pool(self) -> ProcessPoolExecutor:
        if self._decoder is None:
            # spawn, not fork: this process runs chDB's and librdkafka's threads.
            self._decoder = ProcessPoolExecutor(
                self.decode_processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
        return self._decoder

    def _drop_duplicates(self, decoded: Future[DecodedPiece]) -> list[bytes]:
        """The rows whose identity their own record owns."""
        piece = decoded.result()
        dup_index = self.claims.duplicate_lines(piece.days, piece.lines)
        if not dup_index:
            return piece.rows
        DUPLICATES.inc(len(dup_index))
        return [row for i, row in enumerate(piece.rows) if i not in dup_index]

    def _insert(
        self,
        intent: Future[None],
        token: str,
        claimed: list[Future[list[bytes]]],
        decoded: list[Future[DecodedPiece]],
    ) -> None:
        intent.result()  # raises if the intent was not recorded: write nothing
        good = [row for piece in claimed for row in piece.result()]
        errors = [row for piece in decoded for row in piece.result().error_rows]
        client = clickhouse_client(self.settings)
        if good:
            client.raw_insert(
                "page_views_raw",
                RAW_COLUMNS,
                b"\n".join(good),
                fmt="JSONCompactEachRow",
                settings={"insert_deduplication_token": token, **PIPELINE_INSERT_SETTINGS},
            )
            STORED.inc(len(good))
        if errors:
            client.raw_insert(
                "processing_errors",
                ERROR_COLUMNS,
                b"\n".join(errors),
                fmt="JSONEachRow",
                settings={"insert_deduplication_token": f"{token}:errors"},
            )


def _exit_with_parent(parent: int) -> None:
    """A decoder process's initializer: exit once the consumer's process is gone. A worker
    of a SIGKILLed parent would otherwise wait on its task queue forever (it holds that
    queue's write end too, so it never reads an end of file)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _nothing(_batch: Batch) -> None:
    pass


def _error_row(raw: bytes, reason: str, offset: int, partition: int, now: float) -> bytes:
    return orjson.dumps(
        {
            "error_time": int(now),
            "raw_message": raw.decode("utf-8", errors="replace"),
            "error_reason": reason,
            "kafka_offset": offset,
            "kafka_partition": partition,
        }
    )


def _default_options() -> PipelineOptions:
    mode = os.environ.get("CLICKFLOW_PAGEVIEWS_BATCH_MODE", "hybrid")
    records = int(os.environ.get("CLICKFLOW_PAGEVIEWS_BATCH_RECORDS", "5000"))
    seconds = float(os.environ.get("CLICKFLOW_PAGEVIEWS_BATCH_SECONDS", "1.0"))
    delivery = Delivery(os.environ.get("CLICKFLOW_PAGEVIEWS_DELIVERY", "exactly-once"))
    return PipelineOptions(BatchTrigger.from_mode(mode, records, seconds), delivery)


PIPELINES = [
    PipelineSpec(
        name="pageviews",
        topics=[TopicSpec(PAGEVIEWS_TOPIC, 4)],
        store="clickhouse",
        build_handler=lambda settings, _opts: PageViewHandler(settings),
        build_intent_log=lambda settings: ClickHouseIntentLog(settings),
        default_options=_default_options(),
    )
]
