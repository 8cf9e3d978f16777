"""The adclicks pipeline: validate, dedup by click_id, watermark, write raw + minute buckets.

Per batch, per partition chunk:

1. decode each record (:func:`decode_click`); malformed ones and clicks stamped more than
   ``max_future_s`` ahead of processing time become dead letters (they never reach the
   watermark);
2. drop copies of click_ids already counted (:mod:`.dedup`);
3. advance the partition's watermark (max event time - allowed lateness); clicks older than
   it are *late*: counted in metrics and still written, so they correct their minute;
4. insert the rows into ``ad_clicks_raw`` with the chunk's deduplication token. The
   materialized view sums them into ``ad_clicks_minute`` in the same insert, so a replayed
   chunk (exactly-once intent log after a crash) changes neither table.

After the chunks, the watermarks are saved (monotone, idempotent) for the finality answer.
"""

from __future__ import annotations

import hashlib
import logging
import time

from clickflow.config import Settings
from clickflow.domains.adclicks import metrics
from clickflow.domains.adclicks.config import AdClicksConfig
from clickflow.domains.adclicks.dedup import SeenClicks, load_recent, origin
from clickflow.domains.adclicks.events import (
    RAW_COLUMNS,
    RawRow,
    RejectedClick,
    decode_click,
    encode_rows,
)
from clickflow.domains.adclicks.watermark import MINUTE_MS, load_partition_maxima, save_watermarks
from clickflow.exactly_once.insert import insert_chunk
from clickflow.exactly_once.intent_log import ClickHouseIntentLog
from clickflow.kafka.batch import Batch, BatchTrigger, Chunk
from clickflow.kafka.dlq import DeadLetter
from clickflow.kafka.topics import TopicSpec
from clickflow.logs import log_fields
from clickflow.pipelines import PipelineOptions, PipelineSpec
from clickflow.stores.clickhouse import clickhouse_client

log = logging.getLogger("clickflow.adclicks")

TP = tuple[str, int]


def token_hash(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "big")


class AdClicksHandler:
    def __init__(self, settings: Settings, config: AdClicksConfig) -> None:
        self.settings = settings
        self.config = config
        self.lateness_ms = int(config.allowed_lateness_s * 1000)
        self.max_future_ms = int(config.max_future_s * 1000)
        self.seen = SeenClicks(config.dedup_window)
        self.max_event: dict[int, int] = {}  # partition -> max click time seen (ms)
        self._next_offset: dict[TP, int] = {}
        self._warmed = False

    # -- state -------------------------------------------------------------------------------

    def _warm(self, batch: Batch, jumped: list[int]) -> None:
        """Partitions new to this process or whose offsets jumped (start, crash, rebalance):
        reload recent click_ids from the raw store — of every partition the first time
        (a copy may sit on another partition), then of the jumped ones only — and the
        persisted watermarks."""
        client = clickhouse_client(self.settings)
        first_ts = [c.messages[0].timestamp()[1] for c in batch.chunks]
        since = min(first_ts) - int(self.config.dedup_horizon_s * 1000)
        only = jumped if self._warmed else None
        items = load_recent(client, since, self.config.dedup_window, only)
        self.seen.add(items)
        self._warmed = True
        for p, mx in load_partition_maxima(client, self.config.topic).items():
            self.max_event[p] = max(self.max_event.get(p, mx), mx)
        log.info(
            "dedup cache warmed",
            extra=log_fields(
                pipeline="adclicks", partitions=only or "all", click_ids=len(items), since_ms=since
            ),
        )

    # -- batch -------------------------------------------------------------------------------

    def handle(self, batch: Batch) -> list[DeadLetter]:
        client = clickhouse_client(self.settings)
        letters: list[DeadLetter] = []
        touched: set[int] = set()
        # A retried batch (the sink failed part-way) also lands here: its written chunks are
        # replays (see _rows).
        jumped = [
            c.partition
            for c in batch.chunks
            if self._next_offset.get((c.topic, c.partition)) != c.first_offset
        ]
        if jumped:
            self._warm(batch, jumped)
        for chunk in batch.chunks:
            token = chunk.token(batch.group)
            tp = (chunk.topic, chunk.partition)
            rows, fresh, chunk_letters, max_ms, stats = self._rows(chunk, token_hash(token))
            if rows:
                insert_chunk(client, "ad_clicks_raw", encode_rows(rows), token, columns=RAW_COLUMNS)
            # Written: now the chunk's effects on the in-memory state are real.
            self.seen.add(fresh)
            if max_ms is not None:
                self.max_event[chunk.partition] = max_ms
                touched.add(chunk.partition)
            self._next_offset[tp] = chunk.last_offset + 1
            letters += chunk_letters
            self._observe(chunk, len(rows), stats)
        if touched:
            now_ms = int(time.time() * 1000)
            marks = {p: (self.max_event[p], self.max_event[p] - self.lateness_ms) for p in touched}
            save_watermarks(client, self.config.topic, self.config.partitions, marks, now_ms)
            for p, (_, wm) in marks.items():
                metrics.WATERMARK_DELAY.labels(str(p)).set((now_ms - wm) / 1000)
            if len(self.max_event) >= self.config.partitions:
                final_end = min(self.max_event.values()) - self.lateness_ms
                metrics.FINAL_DELAY.set((now_ms - final_end // MINUTE_MS * MINUTE_MS) / 1000)
        metrics.DEDUP_CACHE.set(len(self.seen))
        return letters

    def _first_written_here(self, chunk: Chunk, chunk_hash: int) -> bool:
        """Were the already-written records of this chunk first written by this very chunk
        (same offset range, same token)? Then writing them again is a no-op per table."""
        stamps = [m.timestamp()[1] for m in chunk.messages]
        rows = (
            clickhouse_client(self.settings)
            .query(
                "SELECT DISTINCT chunk_hash FROM ad_clicks_raw WHERE kafka_partition = {p:UInt16} "
                "AND kafka_offset >= {a:UInt64} AND kafka_offset <= {b:UInt64} "
                "AND ingest_ms >= {t0:Int64} AND ingest_ms <= {t1:Int64}",
                parameters={
                    "p": chunk.partition,
                    "a": chunk.first_offset,
                    "b": chunk.last_offset,
                    "t0": min(stamps),
                    "t1": max(stamps),
                },
            )
            .result_rows
        )
        return [r[0] for r in rows] == [chunk_hash]

    def _rows(
        self, chunk: Chunk, chunk_hash: int
    ) -> tuple[list[RawRow], dict[str, int], list[DeadLetter], int | None, tuple]:
        now_ms = int(time.time() * 1000)
        seen = self.seen
        fresh: dict[str, int] = {}  # click_id -> origin, first copies in this chunk
        get = seen.get
        rows: list[RawRow] = []
        letters: list[DeadLetter] = []
        partition = chunk.partition
        base = origin(partition, 0)
        max_ms = self.max_event.get(partition)
        lateness = self.lateness_ms
        final_end = None
        if len(self.max_event) >= self.config.partitions:
            final_end = (min(self.max_event.values()) - lateness) // MINUTE_MS * MINUTE_MS
        dups = replays = late = late_final = 0
        rewrite: bool | None = None
        rejected: dict[str, int] = {}
        for m in chunk.messages:
            try:
                c = decode_click(m.value(), now_ms, self.max_future_ms)
            except RejectedClick as e:
                letters.append(DeadLetter(m, str(e)))
                rejected[e.kind] = rejected.get(e.kind, 0) + 1
                continue
            cid = c.click_id
            if cid in fresh:
                dups += 1
                continue
            offset = m.offset()
            here = base | offset  # origin(partition, offset)
            first = get(cid)
            if first is not None:
                if first != here:
                    dups += 1  # a copy of a click already written
                    continue
                # The same record read again (crash, rebalance, retried batch). If it was
                # first written by this same chunk (exactly-once replay of a recorded chunk),
                # write it again with the same token: ClickHouse drops the repeat per table
                # and fills the view if a crash fell between the raw part and the view's
                # part. Otherwise (at-least-once re-read, another group) drop it.
                replays += 1
                if rewrite is None:
                    rewrite = self._first_written_here(chunk, chunk_hash)
                if not rewrite:
                    continue
            fresh[cid] = here
            ts = c.click_timestamp
            if max_ms is None or ts > max_ms:
                max_ms = ts
            elif ts < max_ms - lateness:
                late += 1
                if final_end is not None and ts < final_end:
                    late_final += 1
            rows.append(
                RawRow(
                    cid,
                    c.ad_id,
                    ts,
                    c.user_id,
                    c.ip,
                    c.country,
                    c.device,
                    c.os,
                    partition,
                    offset,
                    m.timestamp()[1],
                    chunk_hash,
                )
            )
        return rows, fresh, letters, max_ms, (dups, replays, late, late_final, rejected)

    def _observe(self, chunk: Chunk, accepted: int, stats: tuple) -> None:
        dups, replays, late, late_final, rejected = stats
        metrics.CLICKS.inc(accepted)
        if dups:
            metrics.DUPLICATES.inc(dups)
        if replays:
            metrics.REPLAYS.inc(replays)
        if late:
            metrics.LATE.inc(late)
        if late_final:
            metrics.LATE_AFTER_FINAL.inc(late_final)
        for kind, n in rejected.items():
            metrics.REJECTED.labels(kind).inc(n)
        last_ts = chunk.messages[-1].timestamp()[1]
        if last_ts > 0:
            lag = max(0.0, time.time() - last_ts / 1000)
            metrics.CONSUMER_LAG.labels(str(chunk.partition)).set(lag)


def pipeline_spec(config: AdClicksConfig | None = None) -> PipelineSpec:
    cfg = config or AdClicksConfig()
    return PipelineSpec(
        name="adclicks",
        topics=[TopicSpec(cfg.topic, cfg.partitions)],
        store="clickhouse",
        build_handler=lambda settings, _opts: AdClicksHandler(settings, cfg),
        build_intent_log=ClickHouseIntentLog,
        # Large batches: fewer, bigger inserts (each feeds the view and the projection).
        default_options=PipelineOptions(trigger=BatchTrigger(max_records=20_000, max_seconds=1.0)),
    )


PIPELINES = [pipeline_spec()]
