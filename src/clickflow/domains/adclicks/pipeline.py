"""The adclicks pipeline: validate, dedup by click_id, watermark, write raw + minute buckets.

Per batch, per partition chunk:

1. decode each record (:func:`decode_click`); malformed ones and clicks stamped more than
   ``max_future_s`` ahead of the record's Kafka timestamp become dead letters (a verdict
   that is the same on replay);
2. claim every click_id in Redis and drop copies of click_ids already counted, exactly, for
   the whole dedup window (:mod:`.claims`);
3. advance the partition's watermark (max event time - allowed lateness, never past
   processing time - allowed lateness); clicks older than it are *late*: counted in metrics
   and still written, so they correct their minute;
4. insert the rows into ``ad_clicks_raw`` with the chunk's deduplication token. The
   materialized view sums them into ``ad_clicks_minute`` in the same insert, so a replayed
   chunk (exactly-once intent log after a crash) changes neither table.

After the chunks, the watermarks are saved (monotone, idempotent) for the finality answer.
"""

from __future__ import annotations

import hashlib
import logging
import time

from confluent_kafka import Message

from clickflow.config import Settings
from clickflow.domains.adclicks import metrics
from clickflow.domains.adclicks.claims import ClickClaims, Verdicts, claim_id, claim_owner
from clickflow.domains.adclicks.config import AdClicksConfig
from clickflow.domains.adclicks.events import (
    RAW_COLUMNS,
    AdClick,
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
from clickflow.pipelines import PipelineOptions, PipelineSpec, stores_answer
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
        self.claims = ClickClaims(
            settings, f"adclicks:seen:{config.topic}:", config.dedup_window_s, config.dedup_grace_s
        )
        self.max_event: dict[int, int] = {}  # partition -> max click time seen (ms)
        self._next_offset: dict[TP, int] = {}
        self.clock = time.time  # processing time (s); tests move it

    # -- state -------------------------------------------------------------------------------

    def _load_maxima(self) -> None:
        """Partitions new to this process or whose offsets jumped (start, crash, rebalance):
        take the persisted per-partition maxima (another consumer may have moved them)."""
        client = clickhouse_client(self.settings)
        for p, mx in load_partition_maxima(client, self.config.topic).items():
            self.max_event[p] = max(self.max_event.get(p, mx), mx)

    def watermark(self, partition: int, now_ms: int) -> int | None:
        """max click time - allowed lateness, never past processing time - lateness: a click
        stamped ahead (up to ``max_future_s``) must not make minutes final early."""
        mx = self.max_event.get(partition)
        return None if mx is None else min(mx, now_ms) - self.lateness_ms

    def _final_end(self, now_ms: int) -> int | None:
        if len(self.max_event) < self.config.partitions:
            return None
        return min(min(mx, now_ms) for mx in self.max_event.values()) - self.lateness_ms

    # -- batch -------------------------------------------------------------------------------

    def handle(self, batch: Batch) -> list[DeadLetter]:
        client = clickhouse_client(self.settings)
        letters: list[DeadLetter] = []
        touched: set[int] = set()
        if any(
            self._next_offset.get((c.topic, c.partition)) != c.first_offset for c in batch.chunks
        ):
            self._load_maxima()
        now_ms = int(self.clock() * 1000)
        decoded = [self._decode(chunk, letters) for chunk in batch.chunks]
        verdicts = self._claim(decoded)
        base = 0
        for chunk, clicks in zip(batch.chunks, decoded, strict=True):
            token = chunk.token(batch.group)
            chunk_hash = token_hash(token)
            rows, max_ms, stats = self._rows(chunk, clicks, base, verdicts, chunk_hash, now_ms)
            base += len(clicks)
            if rows:
                insert_chunk(client, "ad_clicks_raw", encode_rows(rows), token, columns=RAW_COLUMNS)
            if max_ms is not None:
                self.max_event[chunk.partition] = max_ms
                touched.add(chunk.partition)
            self._next_offset[(chunk.topic, chunk.partition)] = chunk.last_offset + 1
            self._observe(chunk, len(rows), stats)
        if touched:
            marks = {p: (self.max_event[p], self.watermark(p, now_ms)) for p in touched}
            save_watermarks(client, self.config.topic, self.config.partitions, marks, now_ms)
            for p, (_, wm) in marks.items():
                metrics.WATERMARK_DELAY.labels(str(p)).set((now_ms - wm) / 1000)
            final_end = self._final_end(now_ms)
            if final_end is not None:
                metrics.FINAL_DELAY.set((now_ms - final_end // MINUTE_MS * MINUTE_MS) / 1000)
        return letters

    def _decode(self, chunk: Chunk, letters: list[DeadLetter]) -> list[tuple[Message, AdClick]]:
        """Valid clicks of a chunk; the others become dead letters. "Too far in the future"
        is judged against the record's Kafka timestamp, so a replay reaches the same verdict."""
        out = []
        rejected: dict[str, int] = {}
        for m in chunk.messages:
            kafka_ms = m.timestamp()[1]
            try:
                c = decode_click(m.value(), kafka_ms if kafka_ms > 0 else None, self.max_future_ms)
            except RejectedClick as e:
                letters.append(DeadLetter(m, str(e)))
                rejected[e.kind] = rejected.get(e.kind, 0) + 1
                continue
            out.append((m, c))
        for kind, n in rejected.items():
            metrics.REJECTED.labels(kind).inc(n)
        return out

    def _claim(self, decoded: list[list[tuple[Message, AdClick]]]) -> Verdicts:
        buckets: list[int] = []
        claims: list[bytes] = []
        bucket = self.claims.bucket
        for clicks in decoded:
            for m, c in clicks:
                kafka_ms = m.timestamp()[1]
                buckets.append(bucket(kafka_ms))
                claims.append(
                    claim_id(c.click_id) + claim_owner(m.partition(), m.offset(), kafka_ms)
                )
        return self.claims.claim(buckets, claims)

    def _written(self, chunk: Chunk) -> dict[int, int]:
        """offset -> chunk_hash of the records of this chunk already in the raw store."""
        stamps = [m.timestamp()[1] for m in chunk.messages]
        rows = (
            clickhouse_client(self.settings)
            .query(
                "SELECT kafka_offset, chunk_hash FROM ad_clicks_raw "
                "WHERE kafka_partition = {p:UInt16} "
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
        return {int(o): int(h) for o, h in rows}

    def _rows(
        self,
        chunk: Chunk,
        clicks: list[tuple[Message, AdClick]],
        base: int,
        verdicts: Verdicts,
        chunk_hash: int,
        now_ms: int,
    ) -> tuple[list[RawRow], int | None, tuple]:
        rows: list[RawRow] = []
        partition = chunk.partition
        max_ms = self.max_event.get(partition)
        lateness = self.lateness_ms
        final_end = self._final_end(now_ms)
        dups = replays = late = late_final = 0
        written: dict[int, int] | None = None
        duplicates, own = verdicts.duplicates, verdicts.replays
        for i, (m, c) in enumerate(clicks, base):
            if i in duplicates:
                dups += 1  # a copy of a click another record claimed
                continue
            offset = m.offset()
            if i in own:
                # The same record read again (crash, rebalance, retried batch, another
                # group). Written by this same chunk (exactly-once replay of a recorded
                # chunk): write it again with the same token, ClickHouse drops the repeat per
                # table and fills the view if a crash fell between the raw part and the
                # view's part. Written by another chunk: drop it. Never written (a crash
                # between the claim and the insert): write it.
                replays += 1
                if written is None:
                    written = self._written(chunk)
                first = written.get(offset)
                if first is not None and first != chunk_hash:
                    continue
            ts = c.click_timestamp
            if max_ms is None or ts > max_ms:
                max_ms = ts
            elif ts < min(max_ms, now_ms) - lateness:
                late += 1
                if final_end is not None and ts < final_end // MINUTE_MS * MINUTE_MS:
                    late_final += 1
            rows.append(
                RawRow(
                    c.click_id,
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
        return rows, max_ms, (dups, replays, late, late_final)

    def _observe(self, chunk: Chunk, accepted: int, stats: tuple) -> None:
        dups, replays, late, late_final = stats
        metrics.CLICKS.inc(accepted)
        if dups:
            metrics.DUPLICATES.inc(dups)
        if replays:
            metrics.REPLAYS.inc(replays)
        if late:
            metrics.LATE.inc(late)
        if late_final:
            metrics.LATE_AFTER_FINAL.inc(late_final)
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
        health_check=stores_answer("clickhouse", "redis"),
    )


PIPELINES = [pipeline_spec()]
