"""Client-chosen ids and timestamps against the UGC pipeline (issue 19, cases 1, 2, 3, 6, 8):
ids with spaces, newlines, NUL or the text of other keys cannot shift a claim, reach
another namespace or stall the pipeline; client event ids are scoped by user and kind;
verdicts on timestamps depend on the record and its Kafka time only; a kind registered
without its table is refused at start-up. Real broker, Redis and chDB."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from clickflow.config import Settings
from clickflow.domains.ugc import pipeline as ugc_pipeline
from clickflow.domains.ugc.pipeline import MissingKindTable, UgcHandler
from clickflow.exactly_once.claims import (
    DayBucketClaims,
    IdentityClaims,
    SeparatorInIdentity,
    scoped_identity,
)
from clickflow.kafka.batch import BatchTrigger
from clickflow.migrations import migrate_clickhouse
from clickflow.stores.clickhouse import clickhouse_client

from .support import (
    BASE_TS,
    Tracking,
    half,
    page_views,
    produce,
    produce_at,
    record,
    run_pipeline,
    ugc_config,
)

SMALL = BatchTrigger(max_records=50, max_seconds=0.2)
CLICK = {"element_type": "trailer", "page_type": "movie"}
CLICKS_SQL = "SELECT user_id, event_id FROM ugc_element_click FINAL ORDER BY user_id, event_id"


@pytest.fixture
def rsettings(settings: Settings, redis_url: str) -> Settings:
    s = settings.model_copy(update={"redis_url": redis_url, "kafka_session_timeout_ms": 3000})
    migrate_clickhouse(s, ["ugc"])
    return s


def clicks(settings: Settings) -> list[tuple[str, str]]:
    return [tuple(r) for r in clickhouse_client(settings).query(CLICKS_SQL).result_rows]


def test_claims_no_id_can_shift_another_claim(rsettings: Settings) -> None:
    """19.1: a trailing space used to make the claim script skip a line and shift every
    later index: the re-send was stored and the new event dropped."""
    claims = IdentityClaims(rsettings, f"t{uuid.uuid4().hex[:8]}:", 60)
    assert claims.duplicates([("dup-1", "t/0/1")]) == set()
    batch = [("abc ", "t/0/2"), ("fresh-2", "t/0/3"), ("dup-1", "t/0/4")]  # dup-1: a re-send
    assert claims.duplicates(batch) == {2}
    hostile = ["a b\nc d\n", "\x00", " ", "x y", "%S+", "a\nb", "😀 \u202e"]
    mine = [(h, f"t/1/{i}") for i, h in enumerate(hostile)]
    assert claims.duplicates(mine) == set()
    assert claims.duplicates(mine) == set()  # a replay keeps its own claims
    copies = [(h, f"t/2/{i}") for i, h in enumerate(hostile)]
    assert claims.duplicates(copies) == set(range(len(hostile)))


def test_day_bucket_claims_refuse_separators(rsettings: Settings) -> None:
    """The page-view claim lines are split on a space and a newline: no identity or owner
    holding one may reach the script (it would shift every later claim of the call)."""
    claims = DayBucketClaims(rsettings, f"t{uuid.uuid4().hex[:8]}:", 60)
    assert claims.duplicates([(1, "abc", "t/0/1"), (1, "def", "t/0/2")]) == set()
    for identity, owner in [("a b", "t/0/3"), ("a\nb", "t/0/3"), ("abc", "t/0 3")]:
        with pytest.raises(SeparatorInIdentity):
            claims.duplicates([(1, identity, owner), (1, "xyz", "t/0/4")])
    with pytest.raises(SeparatorInIdentity):
        claims.duplicate_lines([1, 1], ["a b c\n", "d e\n"])
    assert claims.duplicate_lines([1, 2], ["abc t/0/9\n", "ghi t/0/10\n"]) == {0}


def test_hostile_ids_neither_collide_nor_stall_and_event_ids_are_per_user(
    rsettings: Settings, topic: str
) -> None:
    """19.1, 19.2, 19.3 through the pipeline: ids that spell other keys of the pipeline
    (the claim of another event, the pending set, the sweep's intent), ids with spaces, and
    two users whose SDKs both number their events 1, 2, 3."""
    config = ugc_config(topic)
    p = config.redis_prefix
    t = BASE_TS
    values = [
        record("element_click", "anonymous", CLICK, t, event_id="abc "),
        record("element_click", "anonymous", CLICK, t + 1, event_id="fresh-2"),
        record("element_click", "anonymous", CLICK, t + 2, event_id="dup-1"),
        record("element_click", "anonymous", CLICK, t + 3, event_id="dup-1"),  # client retry
        # The text of other keys, with and without the configured prefix.
        record("element_click", "anonymous", CLICK, t + 4, event_id=f"x {p}pending"),
        record("element_click", "anonymous", CLICK, t + 5, event_id=f"x {p}sweep"),
        record("element_click", "anonymous", CLICK, t + 6, event_id="x pv:pending"),
        record("element_click", "anonymous", CLICK, t + 7, event_id="k.anonymous"),
        record("element_click", "anonymous", CLICK, t + 8, event_id=f"{p}pending:0"),
        half("start", "anonymous", "ugc-seen:k", t + 9),
        half("end", "anonymous", "ugc-seen:k", t + 10),
        half("start", "anonymous", f"{p}pending", t + 11),
        half("start", " ", "x\x00 y\n", t + 12),
        half("end", " ", "x\x00 y\n", t + 13),
    ]
    # Two users, the same client event ids (and the same id for another kind).
    for user in ("alice", "bob"):
        for n in ("1", "2", "3"):
            values.append(record("element_click", user, CLICK, t + 20, event_id=n))
        values.append(
            record("video_complete", user, {"video_id": "v", "duration_total": True}, t, "1")
        )
    handler = Tracking(UgcHandler(rsettings, config, background_sweep=False))
    last = produce(rsettings, topic, values)
    run_pipeline(rsettings, handler, lambda: handler.reached(last), SMALL, f"g-{topic}")
    assert handler.letters == []
    expected_clicks = sorted(
        [("anonymous", e) for e in ("abc ", "fresh-2", "dup-1", "k.anonymous")]
        + [("anonymous", f"x {p}pending"), ("anonymous", f"x {p}sweep")]
        + [("anonymous", "x pv:pending"), ("anonymous", f"{p}pending:0")]
        + [(u, n) for u in ("alice", "bob") for n in ("1", "2", "3")]
    )
    assert clicks(rsettings) == expected_clicks
    completions = clickhouse_client(rsettings).query(
        "SELECT user_id FROM ugc_video_complete FINAL ORDER BY user_id"
    )
    assert [r[0] for r in completions.result_rows] == ["alice", "bob"]
    paired = [(r[0], r[1], r[6]) for r in page_views(rsettings)]
    assert paired == [(" ", "x\x00 y\n", 1), ("anonymous", "ugc-seen:k", 1)]
    # The pipeline's own keys kept their types, and the sweep still works.
    r = redis.Redis.from_url(rsettings.redis_url)
    assert r.type(f"{p}pending:0") in (b"zset", b"none")
    assert r.type(f"{p}sweep") == b"none"
    assert handler.inner.sweep(now_ms=int(time.time() * 1000) + 10 * 86_400_000) == 1
    assert [(x[1], x[6]) for x in page_views(rsettings) if x[1] == f"{p}pending"] == [
        (f"{p}pending", 0)
    ]


def test_timestamp_verdicts_depend_on_kafka_time_not_on_the_clock(
    rsettings: Settings, topic: str
) -> None:
    """19.6: a record is "in the future" or "too old" relative to when it reached Kafka.
    Replayed ten days later (here: read by a second consumer group today), each record
    gets the same verdict as on the day it arrived."""
    now = int(time.time() * 1000)
    day = 86_400_000
    arrived = now - 10 * day  # these records reached Kafka ten days ago
    ok = record("element_click", "u1", CLICK, arrived - 1000, event_id="ok")
    future = record("element_click", "u1", CLICK, arrived + day, event_id="future")
    old = record("element_click", "u1", CLICK, arrived - 400 * day, event_id="old")
    last = produce_at(rsettings, topic, [(ok, arrived), (future, arrived), (old, arrived)])
    reasons = []
    for run in range(2):
        handler = Tracking(UgcHandler(rsettings, ugc_config(topic), background_sweep=False))
        run_pipeline(rsettings, handler, lambda h=handler: h.reached(last), SMALL, f"g{run}")
        reasons.append(sorted(lt.reason for lt in handler.letters))
    assert reasons[0] == reasons[1]
    assert len(reasons[0]) == 2
    assert any("too far in the future" in r for r in reasons[0])
    assert any("too old" in r for r in reasons[0])
    assert [e for _, e in clicks(rsettings)] == ["ok"]


def test_a_kind_without_its_table_is_refused_at_start(
    rsettings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """19.8: registering a kind without its table used to fail with KeyError on its first
    event, retried for ever; now the handler refuses to start and says what is missing."""
    UgcHandler(rsettings, ugc_config("unused"), background_sweep=False).close()
    kinds = dict(ugc_pipeline.EVENT_KINDS)
    kinds["page_scroll"] = kinds["element_click"]
    monkeypatch.setattr(ugc_pipeline, "EVENT_KINDS", kinds)
    with pytest.raises(MissingKindTable, match="page_scroll"):
        UgcHandler(rsettings, ugc_config("unused"), background_sweep=False)
    monkeypatch.setattr(ugc_pipeline, "TABLES", {**ugc_pipeline.TABLES, "page_scroll": "nope"})
    with pytest.raises(MissingKindTable, match="schema.sql"):
        UgcHandler(rsettings, ugc_config("unused"), background_sweep=False)


@pytest.mark.parametrize(
    ("kind", "user_id", "event_id"),
    [
        ("element_click", "alice", "e1"),
        ("search_filter", "5:bob", "1:x"),
        ("quality_change", "a b\nc\x00", "ü:9:"),
        ("video_complete", "", ""),
    ],
)
def test_claim_identity_is_the_scoped_identity(kind: str, user_id: str, event_id: str) -> None:
    """The pipeline's spelled-out identity claims exactly the keys scoped_identity did, so
    claims made before the change still catch re-sends after it."""
    got = ugc_pipeline.claim_identity(kind, user_id, event_id)
    assert got == scoped_identity(kind, user_id, event_id)
