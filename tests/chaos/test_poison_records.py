"""Poison records: a bad producer writes bytes no collector would let through (strings that
are not UTF-8, JSON nested thousands deep, huge numbers) straight to each pipeline's topic.
Each must become a dead letter with a reason; the handler must not raise, because raising
means "the sink is down" and the framework would retry the batch forever (a stalled
pipeline). Every handler runs here against the session's real stores."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import orjson
import psycopg
import pytest
from confluent_kafka import Message

from clickflow.config import Settings
from clickflow.domains.adclicks.config import AdClicksConfig
from clickflow.domains.adclicks.pipeline import AdClicksHandler
from clickflow.domains.adclicks.traffic import AdClickFactory
from clickflow.domains.pageviews.pipeline import PageViewHandler
from clickflow.domains.pageviews.traffic import PageViewFactory
from clickflow.domains.telecom.pipeline import build_ingest
from clickflow.domains.telecom.traffic import TelecomFactory
from clickflow.domains.ugc.config import UgcConfig
from clickflow.domains.ugc.pipeline import UgcHandler
from clickflow.domains.ugc.traffic import UgcEventFactory
from clickflow.kafka.batch import Batch, Chunk
from clickflow.migrations import migrate_clickhouse, migrate_postgres
from clickflow.pipelines import PipelineOptions
from tests.domains.telecom.support import with_database

POISON = {
    "invalid UTF-8 in a string": b'{"page_id":"\xff\xfe","ad_id":"\xff","event":"\xc3\x28",'
    b'"user_id":"\xff","event_id":"\xfe"}',
    "invalid UTF-8 in a nested value": b'{"event":"element_click","meta":{"cell":"\xff"},'
    b'"data":{"element_type":"\xff"}}',
    "nested 100k deep": b'{"data":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nested 100k deep in meta": b'{"meta":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
    "a bare deep array": b"[" * 100_000 + b"]" * 100_000,
    "a 5000-digit number": b'{"view_duration_ms":' + b"9" * 5000 + b',"duration_sec":1}',
    "NaN": b'{"view_duration_ms":NaN}',
    "not JSON at all": b"\x00\x01\x02\xff",
}


def batch_of(values: list[bytes], topic: str) -> Batch:
    msgs = [
        Message(topic=topic, partition=0, offset=i, key=b"k", value=v) for i, v in enumerate(values)
    ]
    return Batch(f"g-{topic}", [Chunk(topic, 0, 0, len(msgs) - 1, msgs)])


@pytest.fixture
def pg_settings(settings_full: Settings) -> Iterator[Settings]:
    assert settings_full.postgres_url
    db = f"poison_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(settings_full.postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    s = settings_full.model_copy(
        update={"postgres_url": with_database(settings_full.postgres_url, db)}
    )
    migrate_postgres(s, ["telecom"])
    yield s
    with psycopg.connect(s.postgres_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA telecom CASCADE")


def _handlers(settings: Settings, pg: Settings, topic: str):
    migrate_clickhouse(settings)
    rng_now = time.time()
    import random

    rng = random.Random(1)
    ugc = UgcHandler(
        settings,
        UgcConfig(topic=topic, redis_prefix=f"pz{uuid.uuid4().hex[:6]}:"),
        background_sweep=False,
    )
    yield "pageviews", PageViewHandler(settings), PageViewFactory().valid(rng, rng_now).value
    yield "ugc", ugc, UgcEventFactory(topic=topic).valid(rng, rng_now).value
    yield (
        "adclicks",
        AdClicksHandler(settings, AdClicksConfig(topic=topic)),
        AdClickFactory(topic=topic).valid(rng, rng_now).value,
    )
    yield (
        "telecom",
        build_ingest(pg, PipelineOptions()),
        orjson.dumps(TelecomFactory(topic=topic).valid(rng, rng_now).truth),
    )


def test_poison_records_become_dead_letters_and_never_stall_a_pipeline(
    settings_full: Settings, pg_settings: Settings
) -> None:
    topic = f"poison-{uuid.uuid4().hex[:8]}"
    outcomes = {}
    for name, handler, good in _handlers(settings_full, pg_settings, topic):
        values = [*POISON.values(), good]
        try:
            letters = handler.handle(batch_of(values, topic))
        except Exception as e:  # noqa: BLE001 - the bug this test is about
            outcomes[name] = f"raised {type(e).__name__}: {str(e)[:120]}"
            continue
        offsets = sorted(d.message.offset() for d in letters)
        if offsets != list(range(len(POISON))):
            outcomes[name] = f"dead letters at offsets {offsets}"
        elif not all(d.reason for d in letters):
            outcomes[name] = "a dead letter without a reason"
    assert outcomes == {}
