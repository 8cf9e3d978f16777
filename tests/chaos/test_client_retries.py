"""A client retry after a lost answer: the collector published the event, crashed before it
answered, and the client sends the same event (same event_id) again. The collector stamps
each copy with its own server timestamp, so the two records differ; the UGC pipeline must
still store the event once."""

from __future__ import annotations

import time
import uuid

import orjson
from confluent_kafka import Message

from clickflow.config import Settings
from clickflow.domains.ugc.config import UgcConfig
from clickflow.domains.ugc.pipeline import TABLES, UgcHandler
from clickflow.kafka.batch import Batch, Chunk
from clickflow.migrations import migrate_clickhouse
from clickflow.stores.clickhouse import clickhouse_client

DATA = {
    "element_click": {"element_type": "movie", "page_type": "movie"},
    "quality_change": {"video_id": "v1", "old_quality": 720, "new_quality": 1080},
    "video_complete": {"video_id": "v1", "duration_total": True},
    "search_filter": {"search_query": "star", "filters": "genre=drama"},
}


def _record(kind: str, event_id: str, ts: int) -> bytes:
    rec = {"event": kind, "event_id": event_id, "user_id": "u1", "timestamp": ts}
    return orjson.dumps({**rec, "data": DATA[kind]})


def test_a_retried_event_is_stored_once(settings_full: Settings) -> None:
    migrate_clickhouse(settings_full)
    topic = f"retry-{uuid.uuid4().hex[:8]}"
    handler = UgcHandler(
        settings_full,
        UgcConfig(topic=topic, redis_prefix=f"rt{uuid.uuid4().hex[:6]}:"),
        background_sweep=False,
    )
    ts = int(time.time() * 1000)
    ids = {kind: uuid.uuid4().hex for kind in DATA}
    offset = 0
    for attempt in range(2):  # the first answer was lost; the retry lands 1.5 s later
        values = [_record(k, ids[k], ts + attempt * 1500) for k in DATA]
        msgs = [
            Message(topic=topic, partition=0, offset=offset + i, key=b"u1", value=v)
            for i, v in enumerate(values)
        ]
        chunk = Chunk(topic, 0, offset, offset + len(msgs) - 1, msgs)
        assert handler.handle(Batch(f"g-{topic}", [chunk])) == []
        offset += len(msgs)
    handler.close()
    ch = clickhouse_client(settings_full)
    counts = {
        kind: ch.command(
            f"SELECT count() FROM {TABLES[kind]} FINAL WHERE event_id = {{e:String}}",  # noqa: S608 - table names from the code
            parameters={"e": ids[kind]},
        )
        for kind in DATA
    }
    assert counts == dict.fromkeys(DATA, 1)
