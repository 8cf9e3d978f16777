"""PostgreSQL writers: partitions on demand across a month boundary, dedup, aggregates exact
under redelivery, retention. (The same writers run in the pipelines, see test_pipeline.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest

from clickflow.config import Settings
from clickflow.domains.telecom.events import decode
from clickflow.domains.telecom.store import AggregateWriter, RawWriter

from .support import (
    Truth,
    encode_all,
    expected_aggregates,
    make_events,
    pg,
    raw_keys,
    read_aggregates,
    with_duplicates,
)

# Months no migration creates ahead of time (the migration covers now-1 .. now+3 months).
BOUNDARY = datetime(2031, 2, 1, tzinfo=UTC)


def partitions(settings: Settings, parent: str) -> list[str]:
    with pg(settings) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s ORDER BY 1",
                [parent],
            ).fetchall()
        ]


def test_partitions_are_created_for_any_month_and_ahead(tc_settings: Settings) -> None:
    now = datetime.now(UTC)
    ahead = {f"events_raw_y{(now + timedelta(days=31 * k)):%Ym%m}" for k in range(3)}
    assert ahead <= set(partitions(tc_settings, "events_raw"))
    assert "events_raw_y2031m01" not in partitions(tc_settings, "events_raw")
    # Events on both sides of a month boundary (and one far in the past) go in without a
    # manual step: the writer creates the missing partitions itself.
    events = make_events(400, BOUNDARY - timedelta(hours=2), timedelta(hours=4))
    events += make_events(3, datetime(2009, 6, 30, 23, 0, tzinfo=UTC), timedelta(hours=2), seed=9)
    writer = RawWriter(tc_settings.postgres_url)
    assert writer.write([decode(v) for v in encode_all(events)]).inserted == 403
    with pg(tc_settings) as conn:
        placed = dict(
            conn.execute(
                "SELECT tableoid::regclass::text, count(*) FROM telecom.events_raw GROUP BY 1"
            ).fetchall()
        )
    before = sum(1 for e in events if e["started_at"] < "2031-02-01")
    assert placed["telecom.events_raw_y2031m01"] == before - 3
    assert placed["telecom.events_raw_y2031m02"] == 400 - (before - 3)
    assert sum(placed.values()) == 403
    assert {"telecom.events_raw_y2009m06", "telecom.events_raw_y2009m07"} & set(placed)
    assert partitions(tc_settings, "agg_applied") == []  # one unpartitioned key table
    # A second writer (another process) meeting the same months is fine.
    again = RawWriter(tc_settings.postgres_url)
    assert again.write([decode(v) for v in encode_all(events)]).inserted == 0


def test_duplicates_are_stored_once(tc_settings: Settings) -> None:
    events = make_events(1000, BOUNDARY - timedelta(days=1), timedelta(days=2))
    sent = with_duplicates(events, 0.3)
    writer = RawWriter(tc_settings.postgres_url)
    half = len(sent) // 2
    first = writer.write([decode(v) for v in encode_all(sent[:half])])
    second = writer.write([decode(v) for v in encode_all(sent[half:])])
    third = writer.write([decode(v) for v in encode_all(sent)])  # a full redelivery
    assert first.inserted + second.inserted == 1000
    assert third.inserted == 0
    keys = raw_keys(tc_settings)
    assert len(keys) == len(set(keys)) == 1000
    assert set(keys) == {(e["source_id"], e["event_id"]) for e in events}


def test_aggregates_are_exact_under_redelivery(tc_settings: Settings) -> None:
    events = make_events(3000, BOUNDARY - timedelta(days=3), timedelta(days=6), users=30)
    truth = Truth()
    for e in events:
        truth.add(e)
    sent = with_duplicates(events, 0.2)
    writer = AggregateWriter(tc_settings.postgres_url)
    # Overlapping batches, as after a crash between the write and the offset commit.
    results = [
        writer.write([decode(v) for v in encode_all(sent[a:b])])
        for a, b in ((0, 1500), (1000, 2500), (2000, len(sent)), (0, len(sent)))
    ]
    assert sum(r.inserted for r in results) == 3000
    assert results[-1].inserted == 0 and results[-1].version is None  # nothing changed
    versions = [r.version for r in results[:3]]
    assert versions == sorted(versions) and None not in versions
    assert read_aggregates(tc_settings) == expected_aggregates(truth)


def test_retention_drops_old_partitions_only(tc_settings: Settings) -> None:
    events = make_events(200, datetime(2030, 11, 15, tzinfo=UTC), timedelta(days=90))
    RawWriter(tc_settings.postgres_url).write([decode(v) for v in encode_all(events)])
    AggregateWriter(tc_settings.postgres_url).write([decode(v) for v in encode_all(events)])
    with pg(tc_settings) as conn:
        dropped = [
            r[0]
            for r in conn.execute("SELECT telecom.drop_partitions_before('2031-01-01')").fetchall()
        ]
        left = conn.execute("SELECT min(started_at) FROM telecom.events_raw").fetchone()
        agg = conn.execute("SELECT sum(events) FROM telecom.agg_global_day").fetchone()
        keys_left = conn.execute(
            "SELECT (SELECT min(started_at) FROM telecom.event_keys),"
            " (SELECT min(started_at) FROM telecom.agg_applied)"
        ).fetchone()
    assert set(dropped) >= {"events_raw_y2030m11", "events_raw_y2030m12"}
    assert not any(d.endswith(("y2031m01", "y2031m02")) for d in dropped)
    assert left is not None and left[0] >= datetime(2031, 1, 1, tzinfo=UTC)
    assert agg is not None and agg[0] == 200  # aggregates are kept
    assert keys_left is not None
    assert all(k >= datetime(2031, 1, 1, tzinfo=UTC) for k in keys_left)


def test_a_month_dropped_by_retention_comes_back_on_demand(tc_settings: Settings) -> None:
    events = [decode(v) for v in encode_all(make_events(50, BOUNDARY, timedelta(days=2)))]
    writer = RawWriter(tc_settings.postgres_url)
    writer.write(events[:25])
    with pg(tc_settings) as conn:
        conn.execute("SELECT telecom.drop_partitions_before('2031-03-01')")
    # The writer still believes the month exists: the first attempt fails (the framework
    # retries the batch), the retry re-creates the partition.
    with pytest.raises(psycopg.errors.CheckViolation, match="no partition"):
        writer.write(events)
    assert writer.write(events).inserted == 50
    assert len(raw_keys(tc_settings)) == 50


def _resent_with_other_start(e: dict, hours: int) -> dict:
    """The same (source_id, event_id) re-sent with a corrected started_at (and ended_at)."""
    shift = timedelta(hours=hours)
    start = datetime.fromisoformat(e["started_at"]) + shift
    end = datetime.fromisoformat(e["ended_at"]) + shift
    return {**e, "started_at": start.isoformat(), "ended_at": end.isoformat()}


def test_same_source_and_event_id_with_two_started_at_is_one_event(tc_settings: Settings) -> None:
    events = make_events(300, BOUNDARY - timedelta(days=2), timedelta(days=1), users=20)
    truth = Truth()
    for e in events:
        truth.add(e)
    # Corrections land in another day, and some in another month (another partition).
    corrected = [_resent_with_other_start(e, 24 * (1 + i % 40)) for i, e in enumerate(events)]
    raw, agg = RawWriter(tc_settings.postgres_url), AggregateWriter(tc_settings.postgres_url)
    for w in (raw, agg):
        # Across batches, inside one batch, and in a full redelivery: the first copy wins.
        assert w.write([decode(v) for v in encode_all(events[:150])]).inserted == 150
        both = events[150:] + corrected[:200]
        assert w.write([decode(v) for v in encode_all(both)]).inserted == 150
        assert w.write([decode(v) for v in encode_all(corrected + events)]).inserted == 0
    keys = raw_keys(tc_settings)
    assert len(keys) == len(set(keys)) == 300
    with pg(tc_settings) as conn:
        starts = dict(
            ((s, i), t)
            for s, i, t in conn.execute(
                "SELECT source_id, event_id, started_at FROM telecom.events_raw"
            ).fetchall()
        )
    first = {(e["source_id"], e["event_id"]): decode(orjson.dumps(e)).started_at for e in events}
    assert starts == first
    assert read_aggregates(tc_settings) == expected_aggregates(truth)


def test_text_postgresql_cannot_store_goes_to_the_dlq_not_into_a_retry_loop(
    tc_settings: Settings,
) -> None:
    from clickflow.domains.telecom.pipeline import TelecomHandler

    from .support import batch_of

    good = make_events(20, BOUNDARY, timedelta(hours=1), users=5)
    base = good[0]
    bad = [
        {**base, "event_id": "nul\x00id"},
        {**base, "event_id": "x2", "source_id": "s\x00"},
        {**base, "event_id": "x3", "user_id": "\x00"},
        {**base, "event_id": "x4", "meta": {"cell": "A\x00"}},
        {**base, "event_id": "x5", "meta": {"\x00": [1, {"k": 2**70}]}},
    ]
    big = {**base, "event_id": "big-int-meta", "meta": {"n": 2**70, "s": "\\u0000 text"}}
    # json, not orjson: orjson refuses integers beyond 64 bits, which JSON allows.
    values = [json.dumps(e).encode() for e in good[:10] + bad + [big] + good[10:]]
    for make in (RawWriter, AggregateWriter):
        handler = TelecomHandler("t", make(tc_settings.postgres_url).write)
        letters = handler.handle(batch_of(values))
        assert sorted(dl.message.value() for dl in letters) == sorted(
            json.dumps(e).encode() for e in bad
        )
        assert all("contains NUL" in dl.reason for dl in letters)
    keys = set(raw_keys(tc_settings))
    assert keys == {(e["source_id"], e["event_id"]) for e in good + [big]}
    with pg(tc_settings) as conn:
        meta = conn.execute(
            "SELECT meta FROM telecom.events_raw WHERE event_id = 'big-int-meta'"
        ).fetchone()
        counted = conn.execute("SELECT count(*) FROM telecom.agg_applied").fetchone()
    assert meta is not None and meta[0] == {"n": 2**70, "s": "\\u0000 text"}
    assert counted == (21,)
