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
import os
import time

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
from clickflow.kafka.consumer import Batch, BatchTrigger, Chunk, Delivery
from clickflow.kafka.dlq import DeadLetter
from clickflow.kafka.topics import TopicSpec
from clickflow.pipelines import PipelineOptions, PipelineSpec
from clickflow.stores.clickhouse import (
    DEDUP_INSERT_SETTINGS,
    ClickHouseIntentLog,
    clickhouse_client,
)
from clickflow.stores.redis import IdentityClaims

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


class PageViewHandler:
    def __init__(self, settings: Settings, dedup_ttl_s: int = 7 * 24 * 3600) -> None:
        self.settings = settings
        self.claims = IdentityClaims(settings, "pv:seen:", dedup_ttl_s)

    def handle(self, batch: Batch) -> list[DeadLetter]:
        now = time.time()
        letters: list[DeadLetter] = []
        per_chunk: list[tuple[Chunk, list[tuple[str, Message, bytes]], list[bytes]]] = []
        for chunk in batch.chunks:
            rows: list[tuple[str, Message, bytes]] = []
            errors: list[bytes] = []
            for m in chunk.messages:
                raw = m.value() or b""
                try:
                    ev = decode_page_view(raw, now)
                except InvalidEvent as e:
                    reason = str(e)
                    letters.append(DeadLetter(m, reason))
                    errors.append(_error_row(raw, reason, m, now))
                    continue
                identity = event_identity(raw)
                row = orjson.dumps(
                    {
                        "event_time": ev.timestamp.timestamp(),
                        "page_id": ev.page_id,
                        "user_id": ev.user_id,
                        "duration_ms": ev.view_duration_ms,
                        "user_agent": ev.user_agent,
                        "ip_address": ev.ip_address or "::",
                        "region": ev.region,
                        "is_bounce": 1 if ev.is_bounce else 0,
                        "event_id": identity,
                        "kafka_offset": m.offset(),
                        "kafka_partition": m.partition(),
                    }
                )
                rows.append((identity, m, row))
            per_chunk.append((chunk, rows, errors))

        kept = self._drop_duplicates(per_chunk)
        client = clickhouse_client(self.settings)
        for (chunk, _rows, errors), good in zip(per_chunk, kept, strict=True):
            token = chunk.token(batch.group)
            if good:
                client.raw_insert(
                    "page_views_raw",
                    RAW_COLUMNS,
                    b"\n".join(good),
                    fmt="JSONEachRow",
                    settings={"insert_deduplication_token": token, **DEDUP_INSERT_SETTINGS},
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
        if letters:
            INVALID.inc(len(letters))
        return letters

    def _drop_duplicates(
        self, per_chunk: list[tuple[Chunk, list[tuple[str, Message, bytes]], list[bytes]]]
    ) -> list[list[bytes]]:
        claims: list[tuple[str, str]] = []
        for chunk, rows, _errors in per_chunk:
            prefix = f"{chunk.topic}/{chunk.partition}/"
            claims += [(identity, f"{prefix}{m.offset()}") for identity, m, _ in rows]
        dup_index = self.claims.duplicates(claims)
        if dup_index:
            DUPLICATES.inc(len(dup_index))
        kept: list[list[bytes]] = []
        i = 0
        for _chunk, rows, _errors in per_chunk:
            good = []
            for _identity, _m, row in rows:
                if i not in dup_index:
                    good.append(row)
                i += 1
            kept.append(good)
        return kept


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
