"""PostgreSQL writers: partitions on demand across a month boundary, dedup, aggregates exact
under redelivery, retention. (The same writers run in the pipelines, see test_pipeline.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
    assert "agg_applied_y2031m02" in partitions(tc_settings, "agg_applied")
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
    assert set(dropped) >= {"events_raw_y2030m11", "events_raw_y2030m12", "agg_applied_y2030m12"}
    assert not any(d.endswith(("y2031m01", "y2031m02")) for d in dropped)
    assert left is not None and left[0] >= datetime(2031, 1, 1, tzinfo=UTC)
    assert agg is not None and agg[0] == 200  # aggregates are kept


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
